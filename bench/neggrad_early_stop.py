"""NegGrad with a per-step early stop, on Fashion-MNIST class 0 (LAF's CNN), where the card's
budget collapses the model (Test_r 11.11, docs/benchmarks.md).

The target D_f accuracy is chosen on the *validation* split (seed 0); ``--split test`` then runs
the chosen target on the test split for the given seeds. Models come from the model cache
(``bench/pretrain.py`` fills it).

    python bench/neggrad_early_stop.py --split val --seeds 0 --targets none,1,5,10,20 --check-every 10
    python bench/neggrad_early_stop.py --split test --seeds 0,1,2 --targets 5 --check-every 10
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tune_mixunlearn import load_setting  # noqa: E402

from mixunlearn.methods import make_config, run_method  # noqa: E402
from mixunlearn.metrics import evaluate, gap_to_retrain  # noqa: E402
from mixunlearn.utils import resolve_device  # noqa: E402


def _cell(rows: list[dict], key: str) -> str:
    vals = [r[key] for r in rows]
    return f"{np.mean(vals):.2f} ± {np.std(vals, ddof=1) if len(vals) > 1 else 0.0:.2f}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--split", choices=("val", "test"), default="val")
    p.add_argument("--seeds", default="0")
    p.add_argument("--targets", default="none,1,5,10,20", help="D_f accuracy targets in %%; 'none' = no early stop")
    p.add_argument("--check-every", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device("auto")
    rows: dict[str, list[dict]] = {}
    for seed in [int(s) for s in args.seeds.split(",")]:
        data, original, retrain = load_setting("fashion_mnist", "class:0", seed, device, False, args.split)
        ref = evaluate(retrain, data)
        rows.setdefault("Retrain", []).append({**ref, "gap": 0.0, "stop": "–"})
        for t in args.targets.split(","):
            over = {} if t == "none" else {"stop_forget_acc": float(t), "check_every": args.check_every}
            msgs: list[str] = []
            res = run_method("neggrad", original, data, make_config("neggrad", original.family, over),
                             callbacks=[lambda ev, m=msgs: ev.message and "stopped early" in ev.message
                                        and m.append(ev.message)])
            m = evaluate(res.model, data)
            stop = msgs[0].split("stopped early ")[1].split(":")[0] if msgs else "no stop"
            rows.setdefault(t, []).append({**m, "gap": gap_to_retrain(m, ref, "class"), "stop": stop})
            print(f"seed {seed} target {t}: test_r {m['test_r']:.2f} test_f {m['test_f']:.2f} asr {m['asr']:.2f} "
                  f"gap {rows[t][-1]['gap']:.2f} ({stop}, {res.seconds:.1f} s)", flush=True)
    print(f"\n**NegGrad early stop, fashion_mnist class:0, {args.split} split, seeds {args.seeds}, "
          f"checked every {args.check_every} steps**\n")
    print("| D_f accuracy target | Test_r | Test_f | ASR | gap to Retrain | stopped |")
    print("|---|---|---|---|---|---|")
    for t, rs in rows.items():
        print(f"| {t} | {_cell(rs, 'test_r')} | {_cell(rs, 'test_f')} | {_cell(rs, 'asr')} | "
              f"{np.mean([r['gap'] for r in rs]):.2f} "
              f"| {'; '.join(r['stop'] for r in rs)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
