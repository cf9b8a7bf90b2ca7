"""How close can any unlearned model get to Retrain? The gap of an independently seeded Retrain.

The gap to Retrain (EVALUATION.md §2.3) compares one unlearned model with one Retrain, both draws
of a random training. Even a method that produced exactly "another Retrain" would not score 0: it
would score the gap between two Retrains trained on the same D_r with different seeds. This script
measures that floor on the same splits, metrics and attacks as the tables: for each setting it
loads (or trains) the task's Retrain, trains ``--alt`` more Retrains at the seeds of the strong
evaluation's "retrain as a method" pool (stream 2: ``pools.pool_seeds(seed, n, "unlearner")``, so
they are cached and shared with it), scores each exactly as a method is scored, and reports their
gap to the task's Retrain beside the gap of methods read from result files (``--runs``).

    python bench/retrain_floor.py --dataset digits --forget class --classes 0-9 --seeds 0,1,2 \\
        --cache bench/out/digits_gen2/model_cache --runs "bench/out/digits_gen3/runs/*.json"

Writes ``floor.json`` (every alt Retrain's metrics and gap) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from mixunlearn.experiment import ExperimentConfig, prepare_data, prepare_oracles  # noqa: E402
from mixunlearn.metrics import evaluate, gap_to_retrain, metric_set  # noqa: E402
from mixunlearn.pools import pool_seeds, retrained_model  # noqa: E402
from mixunlearn.training import TABLE_RECIPE, ModelCache, get_recipe  # noqa: E402


def parse_ints(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        if "-" in part:
            a, b = part.split("-")
            out += list(range(int(a), int(b) + 1))
        elif part:
            out.append(int(part))
    return out


def specs_of(args) -> list[str]:
    if args.forget == "class":
        return [f"class:{k}" for k in parse_ints(args.classes)]
    return [s for s in args.forget.split(";") if s]


def floor_runs(specs: list[str], seeds: list[int], args, cache: ModelCache) -> list[dict]:
    rows = []
    for spec in specs:
        for seed in seeds:
            cfg = ExperimentConfig(dataset=args.dataset, forget=spec, methods=["retrain"], seed=seed,
                                   recipe=args.recipe or TABLE_RECIPE.get(args.dataset),
                                   eval_split=args.eval_split, device=args.device).resolved()
            data = prepare_data(cfg, torch.device(args.device))
            oracles = prepare_oracles(cfg, data, cache)
            ref = oracles.retrain_record.metrics
            recipe = get_recipe(cfg.recipe)
            for alt_index, alt_seed in enumerate(pool_seeds(seed, args.alt, "unlearner")):
                t0 = time.perf_counter()
                model, seconds, cached, _ = retrained_model(data, cfg.model, recipe, alt_seed, cache,
                                                            source="retrain (alt)")
                m = evaluate(model, data, cfg.seed, cfg.attacks)
                gap = gap_to_retrain(m, ref, data.spec.level)
                rows.append({"spec": spec, "seed": seed, "alt": alt_index, "alt_seed": alt_seed,
                             "level": data.spec.level,
                             "metrics": {k: float(v) for k, v in m.items()}, "retrain": dict(ref), "gap": gap,
                             "train_seconds": seconds, "cached": cached})
                print(f"{spec}@{seed} alt {alt_seed}: gap {gap:.2f} ({time.perf_counter() - t0:.1f}s"
                      f"{', cached' if cached else ''})", flush=True)
    return rows


def method_runs(pattern: str, specs: list[str], seeds: list[int]) -> dict[str, list[dict]]:
    """Runs of each method in the result files matching ``pattern`` (results.json layout), restricted
    to the settings measured here, as rows like :func:`floor_runs`' (method metrics, Retrain's)."""
    out: dict[str, list[dict]] = {}
    wanted = {(s, k) for s in specs for k in seeds}
    for path in sorted(glob.glob(pattern)):
        d = json.loads(Path(path).read_text())
        key = (d["config"]["forget"], d["config"]["seed"])
        if key not in wanted:
            continue
        ref = d["methods"]["retrain"]["metrics"]
        for name, rec in d["methods"].items():
            if name == "retrain" or rec.get("status") != "done" or not rec.get("metrics"):
                continue
            out.setdefault(name, []).append({"spec": key[0], "seed": key[1], "metrics": rec["metrics"],
                                             "retrain": ref})
    return out


def protocol_gap(rows: list[dict], level: str) -> float:
    """The tables' gap (EVALUATION.md §2.3, bench/mixunlearn_digits.py): per setting, the gap of the
    seed-mean metrics to Retrain's seed-mean metrics; then the mean over settings."""
    keys = metric_set(level)
    gaps = []
    for spec in sorted({r["spec"] for r in rows}):
        rs = [r for r in rows if r["spec"] == spec]
        mean = {k: float(np.mean([r["metrics"][k] for r in rs])) for k in keys}
        ret = {k: float(np.mean([r["retrain"][k] for r in rs])) for k in keys}
        gaps.append(gap_to_retrain(mean, ret, level))
    return float(np.mean(gaps))


def table(rows: list[dict], methods: dict[str, list[dict]]) -> str:
    """One line per model: the protocol gap (for the independent Retrains: one value per alt index,
    i.e. "a method that returns another Retrain", mean ± sd over the alt indices), the mean of the
    per-run gaps, and the per-run mean |Δ| of each metric."""
    level = rows[0]["level"]
    keys = metric_set(level)
    lines = ["| model | runs | **gap to Retrain, the tables' protocol** | mean per-run gap | "
             + " | ".join(f"mean abs Δ{k}" for k in keys) + " |",
             "|---|---|---|---|" + "---|" * len(keys)]

    def per_run(rs):
        return float(np.mean([gap_to_retrain(r["metrics"], r["retrain"], level) for r in rs]))

    def diffs(rs):
        return " | ".join(f"{np.mean([abs(r['metrics'][k] - r['retrain'][k]) for r in rs]):.2f}" for k in keys)

    alts = sorted({r["alt"] for r in rows})
    pg = np.array([protocol_gap([r for r in rows if r["alt"] == a], level) for a in alts])
    sd = f" ± {pg.std(ddof=1):.2f} over {len(alts)}" if len(alts) > 1 else ""
    lines.append(f"| independent Retrain (the floor) | {len(rows)} | **{pg.mean():.2f}**{sd} | {per_run(rows):.2f} | "
                 f"{diffs(rows)} |")
    for name, rs in methods.items():
        lines.append(f"| {name} | {len(rs)} | **{protocol_gap(rs, level):.2f}** | {per_run(rs):.2f} | {diffs(rs)} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="digits")
    p.add_argument("--forget", default="class", help="'class' (with --classes) or specs separated by ';'")
    p.add_argument("--classes", default="0-9")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--alt", type=int, default=2, help="independent Retrains per setting (stream-2 seeds)")
    p.add_argument("--recipe", default=None, help="training recipe (default: the tables' recipe, TABLE_RECIPE)")
    p.add_argument("--eval-split", default="test", choices=("test", "val"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache", default=None, help="model cache folder (default: MIXUNLEARN_HOME's)")
    p.add_argument("--runs", default=None, help="glob of results files whose methods to show beside the floor")
    p.add_argument("--out", default=None, help="folder for floor.json")
    args = p.parse_args()
    if args.alt < 1:
        p.error("--alt must be at least 1")
    torch.set_num_threads(args.threads)
    specs, seeds = specs_of(args), parse_ints(args.seeds)
    cache = ModelCache(args.cache) if args.cache else ModelCache()
    rows = floor_runs(specs, seeds, args, cache)
    methods = method_runs(args.runs, specs, seeds) if args.runs else {}
    text = table(rows, methods)
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "floor.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
        (out / "table.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
