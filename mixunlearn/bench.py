"""Seed grids: run one experiment per seed and tabulate mean ± std per metric, the gap to
Retrain (from the means, EVALUATION.md §2.3), wall time and its ratio to Retrain's."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path

from .data import parse_forget_spec
from .datahash import data_hash
from .diagnostics import add_tow
from .experiment import ExperimentConfig, json_safe, prepare_data, run_experiment
from .methods import config_to_dict, make_config
from .metrics import ALL_METRICS, gap_to_retrain, mean_std
from .models import MODELS
from .progress import Callback, ProgressEvent
from .training import budget_profile, get_recipe
from .utils import atomic_write_text, resolve_device


def summarise(results: Sequence[dict]) -> list[dict]:
    """Rows (Retrain first) from a list of results.json dicts of the same setting."""
    level = results[0]["info"]["level"]
    names = list(results[0]["methods"])
    per_method = {n: [_with_tow(r["methods"][n], r) for r in results
                      if r["methods"].get(n, {}).get("status") == "done"] for n in names}
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


def _with_tow(rec: dict, doc: dict) -> dict:
    """``rec`` with ToW (and ToW-MIA) in its metrics: seed documents written before ToW existed get it
    from their own Retrain's metrics, so a resumed table has it for every seed."""
    metrics = rec.get("metrics") or {}
    retrain = ((doc.get("methods") or {}).get("retrain") or {}).get("metrics") or {}
    if "tow" in metrics or not retrain:
        return rec
    filled = add_tow(dict(metrics), retrain)
    return {**rec, "metrics": {k: v for k, v in filled.items() if k in metrics or v == v}}  # no NaN ToW


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


def _method_config(name: str, cfg: ExperimentConfig, family: str) -> dict:
    if name == "retrain":
        return _as_json({"recipe": get_recipe(cfg.recipe).to_dict()})
    return _as_json(config_to_dict(make_config(name, family, cfg.params.get(name, {}))))


def record_problem(rec: object, cfg: ExperimentConfig, level: str) -> str | None:
    """Why a stored record of a done method (or of the original) cannot be reused, or None: its
    metrics must be a mapping holding every metric of the level's set (ASR only with the attacks on),
    each a finite number in 0..100 (metrics are percentages)."""
    if not isinstance(rec, dict):
        return "the record is not an object"
    metrics = rec.get("metrics")
    if not isinstance(metrics, dict):
        return f"its metrics are {json.dumps(metrics)[:40]}, not a set of numbers"
    keys = {"class": ("test_r", "test_f", "asr"), "data": ("train_r", "train_f", "test", "asr")}[level]
    for k in keys:
        if k == "asr" and not cfg.attacks:
            continue
        v = metrics.get(k)
        if k not in metrics:
            return f"metric {k} is missing"
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return f"metric {k} is {json.dumps(v)[:40]}, not a number"
        if not math.isfinite(v):
            return f"metric {k} is {v}, not a finite number"
        if not 0.0 <= v <= 100.0:
            return f"metric {k} = {v:g} is outside 0..100"
    return None


def reusable_records(path: Path, cfg: ExperimentConfig, data_hash: str | None = None,
                     why: list[str] | None = None) -> tuple[dict | None, list[str]]:
    """What of the seed document at ``path`` can stand for ``cfg`` (a resolved config).

    Returns ``(doc, to_run)``. ``doc`` is the stored document when it is the same experiment --
    every field of the config but the method list, their parameters and ``download`` equal, Retrain done with
    the same recipe -- else None (and everything must run). ``to_run`` lists the methods of
    ``cfg`` whose stored record is missing, not done, or made with other hyper-parameters than
    the code would use now (a change of defaults is never mistaken for a finished run), or whose
    metrics are not valid (:func:`record_problem`: missing, NaN, out of range). With ``data_hash``
    (:func:`mixunlearn.datahash.data_hash` of the task), a document made on other data is not
    reused. ``why`` collects one line per record that is not reused because it is invalid."""
    why = why if why is not None else []
    wanted = [m for m in cfg.methods if m != "retrain"]
    try:
        res = json.loads(path.read_text())
    except (OSError, ValueError):
        return None, wanted
    if not isinstance(res, dict) or not isinstance(res.get("methods"), dict) or not isinstance(res.get("config"), dict):
        return None, wanted
    # Whether data may be downloaded changes no result: a table made with --no-download resumes without it.
    same = lambda d: {k: v for k, v in d.items() if k not in ("methods", "params", "download")}  # noqa: E731
    if same(res["config"]) != same(_as_json(cfg.to_dict())):
        return None, wanted
    info = res.get("info") if isinstance(res.get("info"), dict) else {}
    if data_hash is not None and info.get("data_hash") != data_hash:
        why.append(f"{path.name}: made on other data (or before data fingerprints); running it again")
        return None, wanted
    level = parse_forget_spec(cfg.forget).level
    family = budget_profile(MODELS[cfg.model].builder.family, cfg.recipe)
    methods = res["methods"]

    def done(name: str) -> bool:
        rec = methods.get(name)
        if not (isinstance(rec, dict) and rec.get("status") == "done"
                and rec.get("config") == _method_config(name, cfg, family)):
            return False
        problem = record_problem(rec, cfg, level)
        if problem:
            why.append(f"{path.name}: {name}'s record is invalid ({problem}); running it again")
        return problem is None

    if not done("retrain"):
        return None, wanted
    problem = record_problem(res.get("original"), cfg, level)
    if problem:
        why.append(f"{path.name}: the original's record is invalid ({problem}); running it again")
        return None, wanted
    return res, [m for m in wanted if not done(m)]


def reusable_result(path: Path, cfg: ExperimentConfig) -> dict | None:
    """The document at ``path`` when it answers all of ``cfg`` (see :func:`reusable_records`):
    the same experiment and every method done with today's hyper-parameters; else None."""
    doc, to_run = reusable_records(path, cfg)
    if doc is None or to_run:
        return None
    return _restricted(doc, cfg)


def _restricted(doc: dict, cfg: ExperimentConfig) -> dict:
    """``doc`` with exactly the methods of ``cfg``, in its order (Retrain first), and its config."""
    return {**doc, "config": _as_json(cfg.to_dict()),
            "methods": {m: doc["methods"][m] for m in cfg.methods}}


def _say(callbacks: list[Callback] | None, text: str) -> None:
    for cb in callbacks or []:
        cb(ProgressEvent(source="bench", phase="load", step=1, total=1, message=text))


def write_seed(path: Path, doc: dict) -> None:
    # A unique temporary name, renamed over the seed file: a killed run never leaves half a seed
    # file, two benches writing the same folder leave one complete file, readers never see a part.
    atomic_write_text(path, json.dumps(doc, indent=1))


_write = write_seed  # the older private name


def run_bench(cfgs: Sequence[ExperimentConfig], out: str | Path, callbacks: list[Callback] | None = None,
              reuse: bool = True) -> str:
    """Run one experiment per config (one per seed) into ``out/seed{N}.json`` and write the tables.
    With ``reuse``, a seed whose file holds the same experiment (see :func:`reusable_records`) is
    read back, and only its missing or stale methods run (Retrain's record comes from the new run,
    on the same cached model), so a grid can be resumed, extended by methods, or refreshed after a
    method's defaults changed without rerunning the rest."""
    out = Path(out)
    seeds = [c.seed for c in cfgs]
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:  # one seed counted twice would fake its spread (std 0) and its count
        raise ValueError(f"seed {repeated[0]} is given more than once ({', '.join(map(str, seeds))}); "
                         "give each seed once")
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for cfg in cfgs:
        cfg = cfg.resolved()
        path = out / f"seed{cfg.seed}.json"
        # The data is loaded first: a seed file is reused only for the same data (its fingerprint).
        data = prepare_data(cfg, resolve_device(cfg.device))
        why: list[str] = []
        doc, to_run = reusable_records(path, cfg, data_hash(data), why) if reuse else (None, [])
        for line in why:
            _say(callbacks, line)
        if doc is not None and not to_run:
            _say(callbacks, f"reusing {path} (same config, every method done)")
            res = _restricted(doc, cfg)
        elif doc is not None:
            # Same experiment: run only what is missing or stale, against the same cached
            # original and Retrain, and keep every other method's record.
            kept = [m for m in cfg.methods if m != "retrain" and m not in to_run]
            _say(callbacks, f"reusing {len(kept)} method(s) from {path}; running {', '.join(to_run)}")
            sub = dataclasses.replace(cfg, methods=("retrain", *to_run),
                                      params={k: v for k, v in cfg.params.items() if k in to_run})
            part = run_experiment(sub, callbacks=callbacks, data=data, analyses=False).to_json()
            res = merge_records(cfg, doc, part)
            write_seed(path, res)
        else:
            # A seed file holds the metrics (ToW included) the tables need; the per-model diagnostics
            # (per-class accuracy, prediction matrices, CKA) are a single run's (`run`), on both the
            # serial and the Ray path, so their seed files are the same.
            res = run_experiment(cfg, callbacks=callbacks, data=data, analyses=False).to_json()
            write_seed(path, res)
        results.append(res)
    return write_tables(results, out)


def merge_records(cfg: ExperimentConfig, doc: dict | None, part: dict) -> dict:
    """The seed document of ``cfg`` from a new (possibly partial) run ``part`` and the stored
    document ``doc`` it resumes: the new run's original, Retrain and info; every method's newest
    record, in the order of ``cfg`` (methods with no record yet are left out)."""
    merged = {**(doc or {}).get("methods", {}), **part["methods"]}
    return {**part, "config": _as_json(cfg.to_dict()),
            "methods": {m: merged[m] for m in cfg.methods if m in merged}}


def setting_folder(cfg: ExperimentConfig) -> str:
    """The subfolder of a grid's output that holds one setting (data set and forget spec)."""
    return f"{cfg.dataset}-{cfg.forget.replace(':', '_')}"


def write_tables(results: Sequence[dict], out: str | Path) -> str:
    """``out/table.csv`` and ``out/table.md`` from the seed documents of one setting (atomic
    writes); returns the markdown table."""
    out = Path(out)
    rows = summarise(results)
    keys = sorted({k for r in rows for k in r}, key=lambda k: (k != "method", k))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(out / "table.csv", buf.getvalue())
    c = results[0]["config"]
    seeds = ",".join(str(r["config"]["seed"]) for r in results)
    title = f"{c['dataset']} · {c['forget']} · model {c['model']} · seeds {seeds} · {results[0]['info']['device']}"
    md = to_markdown(rows, results[0]["info"]["level"], title)
    atomic_write_text(out / "table.md", md + "\n")
    return md
