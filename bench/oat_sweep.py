"""The one-factor-at-a-time sweep of MixUnlearn's validation rounds (docs/mixunlearn.md), kept so those
rounds reproduce exactly; new tuning uses ``python -m mixunlearn tune`` (bench/tune_mixunlearn.py,
which hands its ``--oat`` / ``--cand`` / ``--base`` / ``--summary-only`` commands to this script).

Honest tuning of MixUnlearn's defaults on the *validation* split (never the test split).

Every setting is built with ``eval_split="val"``: a stratified 10% of the training set D is held
out and plays the test split's role, and D shrinks accordingly (EVALUATION.md §1). Original and
Retrain come from the default model cache (trained when missing, except Fashion-MNIST, which
the background pre-training fills; pass ``--allow-train`` to train those here).

A candidate is a set of overrides of the family's current defaults. ``--oat NAME=V1,V2,...``
adds one-factor-at-a-time variants around ``--base``; ``--cand K=V,K=V`` adds a combination.
Each candidate runs in both label modes on every setting; the score is the mean gap to Retrain
(EVALUATION.md §2.3, ASR included) over the four groups (class/data level × aware/agnostic).
Results are appended to OUT/results.jsonl (a rerun skips what is there) and summarised in
OUT/summary.md.

    python bench/oat_sweep.py --family digits --out bench/out/tune_digits_r1 \\
        --oat tau_mix=0.1,0.5,2,5,20 --oat tau_real=0.1,0.5,2,5,20 --oat omega=0.5,2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # threads sleep, not spin, on a shared machine

import numpy as np  # noqa: E402
import torch  # noqa: E402

from mixunlearn.experiment import ExperimentConfig, prepare_data  # noqa: E402
from mixunlearn.methods import make_config, run_method  # noqa: E402
from mixunlearn.metrics import evaluate, gap_to_retrain  # noqa: E402
from mixunlearn.progress import NonFiniteLossError  # noqa: E402
from mixunlearn.training import TABLE_RECIPE, ModelCache, budget_profile, get_recipe, get_trained  # noqa: E402
from mixunlearn.utils import resolve_device  # noqa: E402

FAMILIES = {
    # family: (dataset, settings as (forget spec, seed))
    "digits": ("digits", [("class:0", 0), ("class:3", 0), ("class:8", 0), ("class:0", 1), ("class:3", 1),
                          ("class:8", 1), ("data:5-9:0.4", 0), ("data:5-9:0.4", 1)]),
    "cnn": ("fashion_mnist", [("class:0", 0), ("data:5-9:0.4", 0)]),
}
MODES = ("mixunlearn", "mixunlearn_agnostic")


def parse_overrides(text: str) -> dict[str, str]:
    out = {}
    for part in text.split(","):
        if part.strip():
            k, v = part.split("=", 1)
            out[k.strip()] = v.strip()
    return out


def candidate_key(overrides: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(overrides.items())) or "base"


def build_candidates(base: dict[str, str], oat: list[str], cands: list[str]) -> list[dict[str, str]]:
    out = [dict(base)]
    for item in oat:
        name, values = item.split("=", 1)
        for v in values.split(","):
            out.append({**base, name.strip(): v.strip()})
    for c in cands:
        out.append({**base, **parse_overrides(c)})
    seen, uniq = set(), []
    for c in out:
        if candidate_key(c) not in seen:
            seen.add(candidate_key(c))
            uniq.append(c)
    return uniq


def load_setting(dataset: str, spec: str, seed: int, device, allow_train: bool, eval_split: str = "val",
                 cache: ModelCache | None = None, recipe: str | None = None):
    """(data, original, retrain) of one setting. Models come from ``cache`` (default: the default
    model cache); missing digits models are trained, others only with ``allow_train``."""
    # The tables' recipe (LAF's for Fashion-MNIST, "digits" for digits), not the interactive fast default.
    cfg = ExperimentConfig(dataset=dataset, forget=spec, seed=seed, eval_split=eval_split, methods=("retrain",),
                           recipe=recipe or TABLE_RECIPE.get(dataset), device=str(device)).resolved()
    data = prepare_data(cfg, device)
    recipe = get_recipe(cfg.recipe)
    cache = cache or ModelCache()
    models, seconds = {}, {}
    for kind in ("original", "retrain"):
        if dataset != "digits" and not allow_train and not _cached(cache, kind, data, cfg.model, recipe):
            raise SystemExit(f"{kind} model for {dataset} {spec} seed {seed} ({eval_split} split) is not in the "
                             "cache yet; wait for the pre-training or pass --allow-train")
        res = get_trained(kind, data, cfg.model, recipe, cache=cache)
        models[kind], seconds[kind] = res.model, res.seconds
    data.meta["train_seconds"] = seconds
    return data, models["original"], models["retrain"]


def _cached(cache: ModelCache, kind, data, model_name, recipe) -> bool:
    from mixunlearn.training import cache_parts

    w, m = cache.paths(cache.key(cache_parts(kind, data, model_name, recipe)))
    return w.is_file() and m.is_file()


def summarise(rows: list[dict], candidates: list[dict[str, str]], base: dict[str, str]) -> str:
    by_key: dict[str, list[dict]] = {}
    for r in rows:
        by_key.setdefault(r["candidate"], []).append(r)
    lines = ["| candidate (vs base) | class aw | class ag | data aw | data ag | **mean gap** | class Test_f "
             "| class abs ΔTest_r | data abs ΔTrain_f | share err | std λ=.5 | retain gain | runs | s/run |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    scored = []
    for cand in candidates:
        key = candidate_key(cand)
        rs = by_key.get(key, [])
        if not rs:
            continue
        groups = {}
        for level in ("class", "data"):
            for mode in MODES:
                g = [r["gap"] for r in rs if r["level"] == level and r["method"] == mode]
                groups[(level, mode)] = float(np.mean(g)) if g else float("nan")
        vals = [v for v in groups.values() if v == v]
        mean_gap = float(np.mean(vals)) if vals else float("nan")
        cls = [r for r in rs if r["level"] == "class"]
        dat = [r for r in rs if r["level"] == "data"]
        fmt = lambda v: "–" if v != v else f"{v:.2f}"  # noqa: E731
        fmt3 = lambda v: "–" if v != v else f"{v:.3f}"  # noqa: E731
        test_f = float(np.mean([r["metrics"]["test_f"] for r in cls])) if cls else float("nan")
        d_test_r = float(np.mean([abs(r["metrics"]["test_r"] - r["retrain"]["test_r"]) for r in cls])) \
            if cls else float("nan")
        d_train_f = float(np.mean([abs(r["metrics"]["train_f"] - r["retrain"]["train_f"]) for r in dat])) \
            if dat else float("nan")
        hs = [r.get("health") or {} for r in rs]

        def health(key: str, hs: list = hs) -> float:
            vals = [h[key] for h in hs if key in h]
            return float(np.mean(vals)) if vals else float("nan")

        diff = {k: v for k, v in cand.items() if base.get(k) != v}
        label = candidate_key(diff) if diff else "**base**"
        failed = sum(r.get("failed", False) for r in rs)
        scored.append((mean_gap, label))
        lines.append(f"| {label} | {fmt(groups[('class', 'mixunlearn')])} | {fmt(groups[('class', MODES[1])])} | "
                     f"{fmt(groups[('data', 'mixunlearn')])} | {fmt(groups[('data', MODES[1])])} | "
                     f"**{fmt(mean_gap)}** | {fmt(test_f)} | {fmt(d_test_r)} | {fmt(d_train_f)} | "
                     f"{fmt3(health('share_err'))} | {fmt3(health('std_mid'))} | {fmt3(health('gain_retain'))} | "
                     f"{len(rs)}{f' ({failed} failed)' if failed else ''} | "
                     f"{np.mean([r['seconds'] for r in rs]):.1f} |")
    best = min((s for s in scored if s[0] == s[0]), default=None)
    if best:
        lines += ["", f"Lowest mean gap: {best[1]} ({best[0]:.2f})."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--family", choices=sorted(FAMILIES), default="digits")
    p.add_argument("--settings", default=None,
                   help="override the family's settings: SPEC@SEED;SPEC@SEED (e.g. class:0@0;data:5-9:0.4@0)")
    p.add_argument("--base", default="", help="overrides of the family defaults every candidate starts from")
    p.add_argument("--oat", action="append", default=[], help="one-factor-at-a-time values: NAME=V1,V2,...")
    p.add_argument("--cand", action="append", default=[], help="an extra candidate: K=V,K=V")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--out", required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--allow-train", action="store_true")
    p.add_argument("--recipe", default=None, help="training recipe of the originals and Retrains (default: the "
                   "tables' recipe, TABLE_RECIPE); a fast recipe tunes the family's fast budget profile")
    p.add_argument("--summary-only", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    dataset, settings = FAMILIES[args.family]
    if args.settings:
        settings = [(s.split("@")[0], int(s.split("@")[1])) for s in args.settings.split(";") if s.strip()]
    modes = [m for m in args.modes.split(",") if m]
    base = parse_overrides(args.base)
    candidates = build_candidates(base, args.oat, args.cand)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "results.jsonl"
    rows = [json.loads(x) for x in log.read_text().splitlines() if x.strip()] if log.exists() else []
    done = {(r["candidate"], r["method"], r["spec"], r["seed"]) for r in rows}
    device = resolve_device(args.device)
    family = None
    if not args.summary_only:
        for spec, seed in settings:
            todo = [(c, m) for c in candidates for m in modes
                    if (candidate_key(c), m, spec, seed) not in done]
            if not todo:
                continue
            data, original, retrain = load_setting(dataset, spec, seed, device, args.allow_train, recipe=args.recipe)
            family = budget_profile(original.family, args.recipe)
            r_metrics = evaluate(retrain, data, seed)
            level = data.spec.level
            for cand, mode in todo:
                cfg = make_config(mode, family, cand)
                t0 = time.time()
                row = {"candidate": candidate_key(cand), "overrides": cand, "method": mode, "spec": spec,
                       "seed": seed, "level": level, "dataset": dataset, "retrain": r_metrics}
                try:
                    res = run_method(mode, original, data, cfg, device=device)
                    m = evaluate(res.model, data, seed)
                    row.update(metrics=m, gap=gap_to_retrain(m, r_metrics, level), seconds=res.seconds,
                               health=res.extras.get("health", {}))
                except NonFiniteLossError as exc:
                    row.update(failed=True, error=str(exc), metrics={}, gap=float("nan"), seconds=0.0)
                rows.append(row)
                with log.open("a") as fh:
                    fh.write(json.dumps(row) + "\n")
                print(f"{spec}@{seed} {mode} {candidate_key(cand)}: gap {row['gap']:.2f} "
                      f"({time.time() - t0:.1f}s)", flush=True)
    text = (f"Validation-split sweep, family {args.family} ({dataset}), settings "
            f"{', '.join(f'{s}@{sd}' for s, sd in settings)}; base = family defaults"
            f"{' + ' + candidate_key(base) if base else ''}.\n\n" + summarise(rows, candidates, base))
    (out / "summary.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
