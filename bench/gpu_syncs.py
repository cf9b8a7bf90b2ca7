"""How often each method makes the host wait for the GPU: CUDA syncs per optimisation step, with
the lines that cause them (torch's sync debug mode, through ``utils.count_cuda_syncs``).

Digits, class 3, seed 0, the digits defaults; the original is trained on the GPU first (outside
the count). A method that syncs once per step or more stalls the GPU pipeline at every step.

    python bench/gpu_syncs.py --out bench/out/gpu_syncs.json            # needs CUDA
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from mixunlearn.data import make_split  # noqa: E402
from mixunlearn.datasets import load_dataset  # noqa: E402
from mixunlearn.methods import make_config, run_method  # noqa: E402
from mixunlearn.training import ModelCache, get_recipe, get_trained  # noqa: E402
from mixunlearn.utils import count_cuda_syncs  # noqa: E402


def steps_seen(into: list):
    return lambda ev: into.append(ev.step)


DEFAULT_METHODS = "mixunlearn,mixunlearn_agnostic,finetune,neggrad_plus,salun,scrub,l1_sparse"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", default=DEFAULT_METHODS)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("gpu_syncs: needs CUDA", file=sys.stderr)
        return 2
    import tempfile

    data = make_split(load_dataset("digits"), "class:3", seed=0).to("cuda")
    with tempfile.TemporaryDirectory() as tmp:
        original = get_trained("original", data, "digits_cnn", get_recipe("digits"), cache=ModelCache(tmp)).model
    run_method("finetune", original, data, make_config("finetune", "digits", {"epochs": 1}))  # warm-up
    rows = []
    for name in args.methods.split(","):
        steps = []
        with count_cuda_syncs() as syncs:
            res = run_method(name, original, data, make_config(name, "digits"),
                             callbacks=[steps_seen(steps)])
        n = max(steps or [0])
        rows.append({"method": name, "steps": n, "syncs": syncs.count,
                     "syncs_per_step": syncs.count / n if n else None, "seconds": res.seconds,
                     "top_sites": syncs.sites()[:4]})
        print(f"{name:22s} steps {n:5d}  syncs {syncs.count:5d}  per step "
              f"{rows[-1]['syncs_per_step'] if n else float('nan'):.3f}  {res.seconds:.2f} s", flush=True)
        for site, k in syncs.sites()[:4]:
            print(f"    {k:5d}  {site}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"device": torch.cuda.get_device_name(), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
