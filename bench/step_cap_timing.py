"""MixUnlearn's time as a multiple of Retrain's, same run, with and without a step cap (issue 11's
time bar; docs/mixunlearn.md, round r7). For every seed: train the original and Retrain into a fresh
cache (so Retrain's seconds are this run's), then run both MixUnlearn modes once per cap on those
models; prints each ratio and the totals (sum of method seconds / sum of Retrain seconds).

    python bench/step_cap_timing.py --forget data:5-9:0.4 --seeds 0,1,2 --caps 0,50,60 --threads 1

Cap 0 = uncapped. The gaps it prints are on the test split: use them as a check, never to choose.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from mixunlearn.experiment import ExperimentConfig, prepare_data, run_one_method  # noqa: E402
from mixunlearn.metrics import evaluate  # noqa: E402
from mixunlearn.training import ModelCache, get_recipe, get_trained  # noqa: E402

MODES = ("mixunlearn", "mixunlearn_agnostic")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="digits")
    p.add_argument("--recipe", default="digits")
    p.add_argument("--forget", default="data:5-9:0.4")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--caps", default="0,50")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    caps = [int(c) for c in args.caps.split(",")]
    torch.set_num_threads(args.threads)
    cache = ModelCache(tempfile.mkdtemp(prefix="step_cap_timing_"))
    recipe = get_recipe(args.recipe)
    retrain_total = 0.0
    totals = {(c, m): 0.0 for c in caps for m in MODES}
    for seed in seeds:
        for cap in caps:
            params = {m: {"max_steps": cap} for m in MODES}
            cfg = ExperimentConfig(dataset=args.dataset, forget=args.forget, methods=MODES, seed=seed,
                                   recipe=args.recipe, device="cpu", params=params).resolved()
            data = prepare_data(cfg, torch.device("cpu"))
            orig = get_trained("original", data, cfg.model, recipe, None, cache)
            ret = get_trained("retrain", data, cfg.model, recipe, None, cache)
            if not ret.cached:
                retrain_total += ret.seconds
            r_metrics = evaluate(ret.model, data, seed, True)
            line = [f"seed {seed} cap {cap}: Retrain {ret.seconds:.2f} s"]
            for m in MODES:
                rec, _ = run_one_method(m, cfg, orig.model, data, r_metrics, torch.device("cpu"))
                totals[(cap, m)] += rec.seconds
                line.append(f"{m} {rec.seconds:.2f} s ({rec.seconds / ret.seconds:.3f}x, gap {rec.gap_to_retrain:.2f})")
            print("; ".join(line) + f"; load {os.getloadavg()[0]:.1f}", flush=True)
    for cap in caps:
        print(f"cap {cap}: " + ", ".join(f"{m} {totals[(cap, m)] / retrain_total:.3f}x" for m in MODES))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
