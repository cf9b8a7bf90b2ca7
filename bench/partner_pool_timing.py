"""Where the agnostic mode's extra time goes under the fast recipe, and what ``partner_pool`` saves
(docs/mixunlearn.md, round r9): on one cached original (trained here when missing), time building
MixUnlearn's trainer (its runner-up partner pools) and its run, for the aware mode, the agnostic mode
with all of D_r (``partner_pool=0``) and with the shipped pool, same process, alternating, repeated.

    python bench/partner_pool_timing.py --dataset fashion_mnist --forget class:0 --seed 0 --repeats 2

Prints seconds per phase (the median over repeats) and the load average before and after.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from mixunlearn.experiment import ExperimentConfig, prepare_data  # noqa: E402
from mixunlearn.methods import make_config  # noqa: E402
from mixunlearn.methods.mixunlearn import MixUnlearnTrainer  # noqa: E402
from mixunlearn.training import ModelCache, budget_profile, get_recipe, get_trained  # noqa: E402
from mixunlearn.utils import synchronize  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--recipe", default="cnn_fast")
    p.add_argument("--forget", default="class:0")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    cfg = ExperimentConfig(dataset=args.dataset, forget=args.forget, methods=("mixunlearn",), seed=args.seed,
                           recipe=args.recipe, device="cpu").resolved()
    data = prepare_data(cfg, cpu)
    orig = get_trained("original", data, cfg.model, get_recipe(args.recipe), None, ModelCache())
    family = budget_profile(orig.model.family, args.recipe)
    shipped = make_config("mixunlearn_agnostic", family, {}).partner_pool
    cases = {"aware": ("mixunlearn", {}), "agnostic, all of D_r": ("mixunlearn_agnostic", {"partner_pool": 0}),
             f"agnostic, pool {shipped}": ("mixunlearn_agnostic", {})}
    synchronize(cpu)  # pays torch's lazy imports before the first timed region
    print(f"load before {os.getloadavg()[0]:.2f}; {args.threads} threads; family {family}", flush=True)
    times = {c: {"build": [], "run": []} for c in cases}
    for _ in range(args.repeats):
        for case, (method, over) in cases.items():
            mc = make_config(method, family, over)
            t0 = time.perf_counter()
            tr = MixUnlearnTrainer(copy.deepcopy(orig.model), data, mc, name=method)
            t1 = time.perf_counter()
            tr.run()
            t2 = time.perf_counter()
            times[case]["build"].append(t1 - t0)
            times[case]["run"].append(t2 - t1)
    for case, t in times.items():
        b, r = statistics.median(t["build"]), statistics.median(t["run"])
        print(f"{case:<24} build {b:6.2f} s  run {r:6.2f} s  total {b + r:6.2f} s")
    print(f"load after {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
