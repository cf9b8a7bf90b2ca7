"""One baseline hyper-parameter over a few values on the *validation* split (never the test split),
scored by the gap to Retrain. Models come from the model cache (``bench/pretrain.py`` fills it).

    python bench/val_sweep.py --method ssd --param alpha --values 1,5,10,50 --dataset fashion_mnist --forget class:0
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from tune_mixunlearn import load_setting  # noqa: E402

from mixunlearn.methods import make_config, run_method  # noqa: E402
from mixunlearn.metrics import evaluate, gap_to_retrain  # noqa: E402
from mixunlearn.utils import resolve_device  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--method", required=True)
    p.add_argument("--param", required=True)
    p.add_argument("--values", required=True, help="comma-separated values")
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--forget", default="class:0")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device("auto")
    data, original, retrain = load_setting(args.dataset, args.forget, args.seed, device, False, "val")
    ref = evaluate(retrain, data)
    level = data.spec.level
    lines = [f"**{args.method}.{args.param}, {args.dataset} {args.forget}, validation split, seed {args.seed}**", "",
             f"| {args.param} | Test_r | Test_f | ASR | gap to Retrain | seconds |", "|---|---|---|---|---|---|",
             f"| Retrain | {ref['test_r']:.2f} | {ref['test_f']:.2f} | {ref['asr']:.2f} | 0.00 | – |"]
    for v in args.values.split(","):
        res = run_method(args.method, original, data, make_config(args.method, original.family, {args.param: v}))
        m = evaluate(res.model, data)
        gap = gap_to_retrain(m, ref, level)
        lines.append(f"| {v} | {m['test_r']:.2f} | {m['test_f']:.2f} | {m['asr']:.2f} | {gap:.2f} | "
                     f"{res.seconds:.1f} |")
        print(lines[-1], flush=True)
    print("\n" + "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
