"""Tune MixUnlearn (both label modes) on the *validation* split with Optuna (``mixunlearn.tune``).

For each forget spec of the family's settings and each mode, one study over that spec's seeds
(the gap to Retrain averaged over them, trial 0 = the shipped defaults, time cap 0.3 x Retrain):
OUT/MODE/SPEC/{study.db,best.json}; a rerun resumes every study up to ``--trials``.

    python bench/tune_mixunlearn.py --family cnn --recipe cnn_fast --trials 20 --out bench/out/tune_mix_optuna

The hand-written one-factor-at-a-time sweep of the earlier validation rounds (docs/mixunlearn.md)
lives on in bench/oat_sweep.py: a command with ``--oat``, ``--cand``, ``--base`` or
``--summary-only`` (every earlier round's) is handed to it unchanged, so those rounds reproduce.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from oat_sweep import FAMILIES, MODES, load_setting  # noqa: E402,F401  (load_setting: other scripts import it here)

LEGACY = ("--oat", "--cand", "--base", "--summary-only")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a.split("=", 1)[0] in LEGACY for a in argv):
        import oat_sweep

        return oat_sweep.main(argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--family", choices=sorted(FAMILIES), default="digits")
    p.add_argument("--settings", default=None, help="SPEC@SEED;SPEC@SEED (default: the family's)")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--recipe", default=None, help="recipe of the originals and Retrains (default: the dataset's)")
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--max-time-ratio", type=float, default=0.3)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)

    import torch

    from mixunlearn.tune import TuneTask, run_tuning

    torch.set_num_threads(args.threads)
    dataset, settings = FAMILIES[args.family]
    if args.settings:
        settings = [(s.split("@")[0], int(s.split("@")[1])) for s in args.settings.split(";") if s.strip()]
    seeds: dict[str, list[int]] = {}
    for spec, seed in settings:
        seeds.setdefault(spec, []).append(seed)
    for mode in [m for m in args.modes.split(",") if m]:
        for spec, spec_seeds in seeds.items():
            task = TuneTask(dataset=dataset, forget=spec, method=mode, seeds=tuple(spec_seeds), recipe=args.recipe,
                            device=args.device, download=False, max_time_ratio=args.max_time_ratio)
            out = Path(args.out) / mode / spec.replace(":", "_")
            res = run_tuning(task, args.trials, out, write=lambda t, m=mode, s=spec: print(f"[{m} {s}] {t}",
                                                                                              flush=True))
            print(f"[{mode} {spec}] best gap {res.best['gap']} (shipped {res.best['shipped_gap']}): "
                  f"{res.best['params']}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
