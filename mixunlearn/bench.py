"""Seed grids: run one experiment per seed and tabulate mean ± std per metric, the gap to
Retrain (from the means, EVALUATION.md §2.3), wall time and its ratio to Retrain's."""

from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

from .experiment import ExperimentConfig, json_safe, run_experiment
from .methods import config_to_dict, make_config
from .metrics import ALL_METRICS, gap_to_retrain, mean_std
from .models import MODELS
from .progress import Callback, ProgressEvent
from .training import get_recipe


def summarise(results: Sequence[dict]) -> list[dict]:
    """Rows (Retrain first) from a list of results.json dicts of the same setting."""
    level = results[0]["info"]["level"]
    names = list(results[0]["methods"])
    per_method = {n: [r["methods"][n] for r in results if r["methods"].get(n, {}).get("status") == "done"]
                  for n in names}
    stats = {n: mean_std([rec["metrics"] for rec in recs]) for n, recs in per_method.items() if recs}
    # results.json writes null for a time or metric that could not be measured.
    secs = {n: [rec["seconds"] for rec in recs if rec.get("seconds") is not None] for n, recs in per_method.items()}
    retrain_means = {k: v[0] for k, v in stats["retrain"].items()}
    retrain_secs = _mean(secs["retrain"])
    rows = []
    for n in names:
        if n not in stats:
            rows.append({"method": n, "seeds_ok": 0, "seeds": len(results)})
            continue
        means = {k: v[0] for k, v in stats[n].items()}
        row = {"method": n, "labels": per_method[n][0].get("labels", ""), "seeds_ok": len(per_method[n]),
               "seeds": len(results)}
        for k in ALL_METRICS:
            if k in stats[n]:
                row[k] = stats[n][k][0]
                row[k + "_std"] = stats[n][k][1]
        row["gap_to_retrain"] = gap_to_retrain(means, retrain_means, level) if "asr" in means else None
        row["seconds"] = _mean(secs[n])
        row["time_ratio_to_retrain"] = (row["seconds"] / retrain_secs
                                        if row["seconds"] is not None and retrain_secs else None)
        rows.append(row)
    return rows


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def to_markdown(rows: list[dict], level: str, title: str = "") -> str:
    main = {"class": ["test_r", "test_f", "asr"], "data": ["train_r", "train_f", "test", "asr"]}[level]
    extra = [k for k in ALL_METRICS if k not in main and k not in ("ua", "ra", "ta")]
    head = ["method"] + main + ["gap", "seconds", "× Retrain"] + extra
    lines = ([f"**{title}**", ""] if title else []) + ["| " + " | ".join(head) + " |",
                                                      "|" + "---|" * len(head)]
    for r in rows:
        if not r.get("seeds_ok"):
            lines.append(f"| {r['method']} | failed on every seed |" + " |" * (len(head) - 2))
            continue
        cell = lambda k, r=r: f"{r[k]:.2f} ± {r[k + '_std']:.2f}" if k in r else "–"
        gap = f"{r['gap_to_retrain']:.2f}" if r.get("gap_to_retrain") is not None else "–"
        ratio = f"{r['time_ratio_to_retrain']:.3f}" if r.get("time_ratio_to_retrain") is not None else "–"
        fails = "" if r["seeds_ok"] == r["seeds"] else f" ({r['seeds_ok']}/{r['seeds']} seeds)"
        secs = f"{r['seconds']:.2f}" if r.get("seconds") is not None else "–"
        lines.append("| " + " | ".join([r["method"] + fails] + [cell(k) for k in main]
                                       + [gap, secs, ratio] + [cell(k) for k in extra]) + " |")
    return "\n".join(lines)


def _as_json(obj) -> object:
    return json.loads(json.dumps(json_safe(obj)))


def reusable_result(path: Path, cfg: ExperimentConfig) -> dict | None:
    """The results.json document at ``path`` when it answers exactly ``cfg`` (a resolved config):
    the same experiment config, every method done, and every method's full hyper-parameters (and
    Retrain's recipe) equal to what the code would use now, so a change of defaults is never
    mistaken for a finished run. Anything else (missing, unreadable, different, failed): None."""
    try:
        res = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(res, dict) or res.get("config") != _as_json(cfg.to_dict()):
        return None
    family = MODELS[cfg.model].builder.family
    methods = res.get("methods")
    if not isinstance(methods, dict):
        return None
    for name in cfg.methods:
        rec = methods.get(name)
        if not isinstance(rec, dict) or rec.get("status") != "done":
            return None
        if name == "retrain":
            want = {"recipe": dataclasses.asdict(get_recipe(cfg.recipe))}
        else:
            want = config_to_dict(make_config(name, family, cfg.params.get(name, {})))
        if rec.get("config") != _as_json(want):
            return None
    return res


def run_bench(cfgs: Sequence[ExperimentConfig], out: str | Path, callbacks: list[Callback] | None = None,
              reuse: bool = True) -> str:
    """Run one experiment per config (one per seed) into ``out/seed{N}.json`` and write the tables.
    With ``reuse``, a seed whose file already answers the same resolved config (see
    :func:`reusable_result`) is read back instead of run again, so a grid can be resumed or extended."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for cfg in cfgs:
        cfg = cfg.resolved()
        path = out / f"seed{cfg.seed}.json"
        res = reusable_result(path, cfg) if reuse else None
        if res is not None:
            for cb in callbacks or []:
                cb(ProgressEvent(source="bench", phase="load", step=1, total=1,
                                 message=f"reusing {path} (same config, every method done)"))
        else:
            res = run_experiment(cfg, callbacks=callbacks).to_json()
            path.write_text(json.dumps(res, indent=1))
        results.append(res)
    rows = summarise(results)
    keys = sorted({k for r in rows for k in r}, key=lambda k: (k != "method", k))
    with open(out / "table.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    c = results[0]["config"]
    seeds = ",".join(str(r["config"]["seed"]) for r in results)
    title = f"{c['dataset']} · {c['forget']} · model {c['model']} · seeds {seeds} · {results[0]['info']['device']}"
    md = to_markdown(rows, results[0]["info"]["level"], title)
    (out / "table.md").write_text(md + "\n")
    return md
