"""Batched vs sequential pool training (issue 14): the same retrained digits models (class 3,
seed 0's split, the digits recipe), first one at a time (``train_supervised``), then K at a time
as a stacked ensemble (``pools.train_supervised_batched``), same seeds, same process, one after
the other; the ratio is sequential seconds per model / batched seconds per model.

    python bench/pool_speed.py                                  # 16 models, groups 4,8,16,32
    python bench/pool_speed.py --models 8 --groups 8 --epochs 10 --out bench/out/pool_speed.json

Also reported: how far the batched models are from the sequential ones of the same seed (largest
weight difference, and the share of test predictions on which they agree). In float32 Adam
normalises each gradient by its running size, so rounding differences in near-zero gradients are
amplified and the two drift apart over hundreds of steps as two runs on different hardware do;
in float64 they stay equal (tests/test_strong_eval.py checks 1e-9). The load average (uptime) is
printed before and after: the machine's cores are shared.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: see mixunlearn/cli.py
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from mixunlearn.data import make_split  # noqa: E402
from mixunlearn.datasets import load_dataset  # noqa: E402
from mixunlearn.models import build_model  # noqa: E402
from mixunlearn.pools import pool_seeds, train_supervised_batched  # noqa: E402
from mixunlearn.training import get_recipe, train_supervised  # noqa: E402


def _load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", type=int, default=16, help="models trained one at a time")
    p.add_argument("--groups", default="4,8,16,32", help="batched group sizes to time")
    p.add_argument("--epochs", type=int, default=None, help="override the digits recipe's 40 epochs")
    p.add_argument("--threads", type=int, default=2, help="torch threads (the machine has 2 cores)")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    groups = [int(g) for g in args.groups.split(",") if g.strip()]
    data = make_split(load_dataset("digits"), "class:3", seed=0)
    recipe = get_recipe("digits")
    if args.epochs:
        recipe = dataclasses.replace(recipe, epochs=args.epochs)
    seeds = pool_seeds(0, max([args.models, *groups]), "reference")
    x, y, idx = data.x_train, data.y_train, data.retain_idx
    print(f"digits class 3: |D_r| = {len(idx)}, {recipe.epochs} epochs, batch {recipe.batch_size}, "
          f"{torch.get_num_threads()} torch threads; load before: {_load()}", flush=True)

    seq_models, t0 = [], time.perf_counter()
    for s in seeds[:args.models]:
        seq_models.append(train_supervised(build_model("digits_cnn", data.info, seed=s), x, y, idx, recipe, s).eval())
    seq = (time.perf_counter() - t0) / args.models
    print(f"sequential: {args.models} models, {seq:.2f} s per model (load {_load()})", flush=True)

    rows = []
    for g in groups:
        t0 = time.perf_counter()
        batched = train_supervised_batched([build_model("digits_cnn", data.info, seed=s) for s in seeds[:g]],
                                           x, y, idx, recipe, seeds[:g])
        per = (time.perf_counter() - t0) / g
        diffs, agree = [], []
        with torch.no_grad():
            for a, b in zip(seq_models, batched):
                diffs.append(max((v.float() - w.float()).abs().max().item()
                                 for v, w in zip(a.state_dict().values(), b.state_dict().values())))
                agree.append(100.0 * (a(data.x_test).argmax(1) == b(data.x_test).argmax(1)).float().mean().item())
        row = {"group": g, "seconds_per_model": per, "speedup": seq / per,
               "max_weight_diff": max(diffs) if diffs else None,
               "test_prediction_agreement_pct": min(agree) if agree else None, "load": _load()}
        rows.append(row)
        print(f"batched x{g:<3d}: {per:.2f} s per model, speed-up {seq / per:.2f}x"
              + (f"; vs sequential: max weight diff {max(diffs):.2g}, test predictions agree >= {min(agree):.1f} %"
                 if diffs else "") + f" (load {_load()})", flush=True)
    doc = {"recipe": dataclasses.asdict(recipe), "n_retain": len(idx), "threads": torch.get_num_threads(),
           "sequential_seconds_per_model": seq, "models": args.models, "batched": rows}
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=1))
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
