"""Can a method's search space meet the tuning time cap at all? Its cheapest corner, measured.

The comparison (bench/tune_all.py) stops every trial slower than ``--max-time-ratio`` × Retrain. A
method whose every trial was stopped may be slow by nature or may have a space that never reaches
its cheap settings. This script runs each method once at the cheapest corner of its space -- every
budget field (epochs, steps, iterations, copies) at its lowest value, every batch size at its
highest, everything else shipped -- on the validation split of one seed, exactly as a tuning trial
is run and timed (``mixunlearn.tune.evaluate_params``: the method's CPU seconds on a CPU against a
timed slice of Retrain's training in this process), and prints its time ratio and gap.

    MIXUNLEARN_HOME=... python bench/cheapest_corner.py --dataset fashion_mnist --forget class:0 \\
        --recipe cnn_fast --methods laf,laf_r,l_mix,scrub,scrub_r,neggrad_plus --out corner.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from mixunlearn.tune import TuneTask, evaluate_params, field_role, prepare_seed  # noqa: E402


def cheapest_corner(dims) -> dict:
    """Budgets at their low end, batch sizes at their high end (fewest steps); other fields shipped."""
    end = {"budget": lambda d: int(d.low), "batch": lambda d: int(d.high)}
    return {d.name: end.get(field_role(d.name, d.kind), lambda d: d.default)(d) for d in dims}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--forget", default="class:0")
    p.add_argument("--recipe", default="cnn_fast")
    p.add_argument("--methods", required=True, help="comma-separated")
    p.add_argument("--seed", type=int, default=0, help="validation seed")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-download", action="store_true")
    p.add_argument("--out", default=None, help="JSON file for the rows")
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    methods = [m for m in args.methods.split(",") if m]
    first = TuneTask(dataset=args.dataset, forget=args.forget, method=methods[0], seeds=(args.seed,),
                     recipe=args.recipe, device="cpu", download=not args.no_download).resolved()
    setup = prepare_seed(first, args.seed)  # original, Retrain and its timed slice: shared by the methods
    rows = []
    print("| method | cheapest corner | × Retrain (CPU s) | val gap |\n|---|---|---|---|", flush=True)
    for m in methods:
        task = dataclasses.replace(first, method=m).resolved()
        dims = task.space()
        corner = cheapest_corner(dims)
        res = evaluate_params(task, [setup], corner)
        changed = {d.name: corner[d.name] for d in dims if corner[d.name] != d.default}
        rows.append({"method": m, "params": corner, "changed": changed, **{k: v for k, v in res.items()
                                                                          if k != "per_seed"}})
        ratio = f"{res['time_ratio']:.3f}" if "time_ratio" in res else res.get("error", "?")
        gap = f"{res['gap']:.2f}" if "gap" in res else "–"
        print(f"| {m} | {', '.join(f'{k} {v}' for k, v in changed.items())} | {ratio} | {gap} |", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
