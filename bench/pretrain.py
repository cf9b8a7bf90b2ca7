"""Fill the model cache with original and retrained models for a grid of settings, so later
runs and benchmarks reuse them (e.g. Fashion-MNIST with LAF's recipe takes ~11 min per model
on 2 CPU cores).

    python bench/pretrain.py --dataset fashion_mnist --forget class:0 data:5-9:0.4 --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mixunlearn.experiment import ExperimentConfig, prepare_data  # noqa: E402
from mixunlearn.progress import ProgressEvent  # noqa: E402
from mixunlearn.training import TABLE_RECIPE, ModelCache, get_recipe, get_trained  # noqa: E402
from mixunlearn.utils import resolve_device  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--forget", nargs="+", default=["class:0", "data:5-9:0.4"])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--eval-split", nargs="+", default=["test"], choices=["test", "val"])
    p.add_argument("--recipe", default=None, help="default: the tables' recipe of the dataset (TABLE_RECIPE)")
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    cache = ModelCache()

    def log(ev: ProgressEvent) -> None:
        if ev.message:
            print(f"[{ev.source}] {ev.message}", flush=True)
        elif ev.losses and ev.step == ev.total:
            print(f"[{ev.source}] done, last loss {ev.losses}", flush=True)

    for split in args.eval_split:
        for seed in [int(s) for s in args.seeds.split(",")]:
            for spec in args.forget:
                cfg = ExperimentConfig(dataset=args.dataset, forget=spec, seed=seed,
                                       recipe=args.recipe or TABLE_RECIPE.get(args.dataset),
                                       device=args.device, eval_split=split, methods=("retrain",)).resolved()
                data = prepare_data(cfg, resolve_device(cfg.device))
                recipe = get_recipe(cfg.recipe)
                for kind in ("original", "retrain"):
                    t = time.time()
                    res = get_trained(kind, data, cfg.model, recipe, [log], cache)
                    print(f"{split} seed {seed} {spec} {kind}: {'cached' if res.cached else 'trained'} "
                          f"({res.seconds:.1f}s training, {time.time() - t:.1f}s now)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
