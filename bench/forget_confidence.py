"""How confident a model is on the forget set D_f: the mechanism behind MixUnlearn's class-level ASR.

The attack (EVALUATION.md §2.1) reads the sorted softmax: confident outputs look like members. For
the original, Retrain and MixUnlearn variants, this prints on D_f the mean top probability, the
mean entropy, the mean probability of the true class and the histogram of predicted classes, then
Test_r / Test_f / ASR and the gap to Retrain. Validation split by default (tuning evidence).

    python bench/forget_confidence.py --dataset fashion_mnist --forget class:0 --seed 0 \\
        --cand '{"pairing": "random"}' --cand '{"pairing": "auto"}' --cand '{"use_l_mix": false}'
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from tune_mixunlearn import load_setting  # noqa: E402

from mixunlearn.methods import make_config, run_method  # noqa: E402
from mixunlearn.metrics import evaluate, gap_to_retrain, predict_logits  # noqa: E402
from mixunlearn.utils import resolve_device  # noqa: E402


def confidence(model, data) -> dict:
    x = data.x_train[data.forget_idx]
    y = data.y_clean[data.forget_idx] if data.y_clean is not None else data.y_train[data.forget_idx]
    p = predict_logits(model, x).softmax(1)
    ent = -(p.clamp_min(1e-12).log() * p).sum(1)
    return {"top": float(p.max(1).values.mean()), "entropy": float(ent.mean()),
            "p_true": float(p[torch.arange(len(y)), y].mean()),
            "pred_hist": torch.bincount(p.argmax(1), minlength=data.n_classes).tolist()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="fashion_mnist", choices=("digits", "fashion_mnist"))
    ap.add_argument("--forget", default="class:0")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--split", default="val", choices=("val", "test"))
    ap.add_argument("--modes", default="mixunlearn")
    ap.add_argument("--cand", action="append", default=[], help="JSON overrides of the family defaults")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device("auto")
    data, original, retrain = load_setting(args.dataset, args.forget, args.seed, device, False, eval_split=args.split)
    level = data.spec.level
    r_metrics = evaluate(retrain, data, args.seed)
    keys = ("test_r", "test_f", "asr") if level == "class" else ("train_f", "test", "asr")
    print(f"| model | D_f top prob | D_f entropy | D_f p(true) | D_f predicted classes | "
          f"{' / '.join(keys)} | gap | seconds |")
    print("|---|---|---|---|---|---|---|---|")

    def row(name, model, m, secs=None):
        c = confidence(model, data)
        gap = gap_to_retrain(m, r_metrics, level)
        print(f"| {name} | {c['top']:.3f} | {c['entropy']:.3f} | {c['p_true']:.3f} | {c['pred_hist']} | "
              f"{' / '.join(f'{m[k]:.2f}' for k in keys)} | {gap:.2f} | {'' if secs is None else f'{secs:.0f}'} |",
              flush=True)

    row("original", original, evaluate(original, data, args.seed))
    row("Retrain", retrain, r_metrics)
    for mode in args.modes.split(","):
        for cand in args.cand or ["{}"]:
            over = json.loads(cand)
            cfg = make_config(mode, original.family, over)
            t0 = time.time()
            res = run_method(mode, original, data, cfg, device=device)
            row(f"{mode} {json.dumps(over) if over else '(defaults)'}", res.model,
                evaluate(res.model, data, args.seed), time.time() - t0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
