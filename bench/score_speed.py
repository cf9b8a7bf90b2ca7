"""Seconds to score one model (accuracies + both membership attacks, metrics.evaluate) on a data
set's task, with the cached original of its default recipe (issue 12: <= 10 s on Fashion-MNIST).

    python bench/score_speed.py [--dataset fashion_mnist] [--forget class:0] [--repeats 2]

The first call includes one-time warm-ups; the load average is printed with every time.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from mixunlearn import metrics  # noqa: E402
from mixunlearn.experiment import ExperimentConfig, prepare_data  # noqa: E402
from mixunlearn.training import get_recipe, get_trained  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="fashion_mnist")
    ap.add_argument("--forget", default="class:0")
    ap.add_argument("--recipe", default=None)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    cfg = ExperimentConfig(dataset=args.dataset, forget=args.forget, recipe=args.recipe, download=False).resolved()
    data = prepare_data(cfg, torch.device("cpu"))
    model = get_trained("original", data, cfg.model, get_recipe(cfg.recipe)).model  # trained once if not cached
    for i in range(args.repeats):
        t = time.perf_counter()
        metrics.evaluate(model, data, cfg.seed)
        print(f"{cfg.dataset} {cfg.recipe}: scoring took {time.perf_counter() - t:.2f} s (call {i + 1}); "
              f"load average {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
