"""The fair comparison: every registered method tuned the same way, then scored on the test split.

Phase ``tune``: for each setting (Fashion-MNIST class:0 and data:5-9:0.4 by default, the fast recipe
cnn_fast) and every registered method that supports it (MixUnlearn in both modes included; new
methods join by registering), one Optuna study of ``--trials`` trials on the *validation* split,
averaged over the same ``--tune-seeds`` (``python -m mixunlearn tune``, trial 0 = the shipped
defaults, time cap 0.3 × Retrain). Studies live in OUT/tune/SETTING/METHOD/ (study.db, best.json).

Phase ``tables``: the test-split tables over ``--seeds`` (3) from the same bench code as
``python -m mixunlearn bench``: OUT/tables/SETTING/shipped (the defaults) and .../tuned (each method
with its best.json's params), then OUT/tables/SETTING/comparison.md with a shipped and a tuned row
per method (gap, time × Retrain) beside the independent-Retrain floor (bench/retrain_floor.py,
OUT/tables/SETTING/floor/floor.json).

Every phase resumes: a finished study, seed file or floor is reused, a partial one continued. Run
the whole thing again after an interruption (or with more ``--trials``: the total per study).

    python bench/tune_all.py --out bench/out/tune_all                  # everything, serially
    python bench/tune_all.py --out bench/out/tune_all --phase tune --ray auto
    python bench/tune_all.py --out bench/out/tune_all --phase tables
    python bench/tune_all.py --out bench/out/tune_all --status          # what is done, what is left
    python bench/tune_all.py --out bench/out/tune_all --phase bundle    # best settings -> mixunlearn/tuned/
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

DATASET = "fashion_mnist"
SETTINGS = ("class:0", "data:5-9:0.4")
RECIPE = "cnn_fast"
# Order of the shipped gaps (docs/benchmarks.md, the fast recipe's table and the new methods' rows).
FIRST = "mixunlearn,l1_sparse,mixunlearn_agnostic,finetune,scrub,random_label,salun,cf_k,scrub_r,sfr_on,eu_k"


def methods_for(forget: str, only: list[str] | None) -> list[str]:
    from mixunlearn.data import parse_forget_spec
    from mixunlearn.methods import list_methods

    kind = parse_forget_spec(forget).kind
    names = [m.name for m in list_methods() if m.name != "retrain" and kind in m.kinds]
    return [m for m in names if not only or m in only]


def folder(forget: str) -> str:
    return f"{DATASET}-{forget.replace(':', '_')}"


def study_dir(out: Path, forget: str, method: str) -> Path:
    return out / "tune" / folder(forget) / method


def studies(args) -> list[tuple[str, str]]:
    """Every (setting, method) study, in the order the workers take them."""
    pairs = [(forget, method) for forget in args.settings for method in methods_for(forget, args.methods)]
    # --first: these methods' studies before the others (per setting, settings in order), so that a
    # partial sweep has tuned the methods closest to Retrain at their shipped settings first.
    first = [m for m in (args.first or "").split(",") if m]
    rank = {m: i for i, m in enumerate(first)}
    order = {f: i for i, f in enumerate(args.settings)}
    pairs.sort(key=lambda p: (order[p[0]], rank.get(p[1], len(rank))))  # (stable: registry order after)
    return pairs


def claim(where: Path) -> bool:
    """Take the study in ``where`` for this process (``--jobs``: the workers walk the same ordered
    list and each takes the next study nobody holds); False when a live process holds it."""
    where.mkdir(parents=True, exist_ok=True)
    lock = where / ".worker"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                pid = int(lock.read_text() or 0)
                os.kill(pid, 0)
                return pid == os.getpid()
            except (ValueError, ProcessLookupError, FileNotFoundError):
                lock.unlink(missing_ok=True)  # its process is gone
                continue
            except PermissionError:
                return False
        with os.fdopen(fd, "w") as fh:
            fh.write(str(os.getpid()))
        return True
    return False


def release(where: Path) -> None:
    lock = where / ".worker"
    try:
        if int(lock.read_text() or 0) == os.getpid():
            lock.unlink()
    except (ValueError, FileNotFoundError):
        pass


def tune_jobs(args) -> int:
    """``--jobs N``: N worker processes of this script, each with ``--threads`` torch threads; they walk
    the same ordered list of studies and each takes the next one no live worker holds (a ``.worker``
    file with its pid in the study's folder); their lines go to this process's output."""
    argv, cmd = iter(sys.argv[1:]), []
    for a in argv:
        if a == "--jobs":
            next(argv, None)  # and its value
        elif not a.startswith("--jobs="):
            cmd.append(a)
    procs = [subprocess.Popen([sys.executable, __file__, *cmd, "--phase", "tune"], cwd=ROOT)
             for _ in range(args.jobs)]
    try:
        return max(p.wait() for p in procs)
    except BaseException:
        for p in procs:
            p.terminate()
        raise


def tune_phase(args, out: Path) -> None:
    if args.threads and not args.ray:
        import torch

        torch.set_num_threads(args.threads)
    for forget, method in studies(args):
        where = study_dir(out, forget, method)
        if not claim(where):
            continue  # another worker has it
        try:
            tune_one(args, forget, method, where)
        finally:
            release(where)


def publish_phase(args, out: Path) -> list[Path]:
    """Publish every finished study (all --trials counted) for the app; a running one is skipped."""
    from mixunlearn.tune import publish

    done = []
    for forget, method in studies(args):
        where = study_dir(out, forget, method)
        if study_finished(out, forget, method, args.trials):
            done.append(publish(where))
        elif (where / "best.json").is_file():
            print(f"[{forget} {method}] still running: not published", flush=True)
    print(f"published {len(done)} tuning result(s) to the app's folder", flush=True)
    return done


def bundle_phase(args, out: Path) -> list[Path]:
    """Write every finished study's best.json into the package's tuning results for its level
    (mixunlearn/tuned/DATASET-RECIPE-LEVEL.json): what the app offers as "tuned" on a fresh
    install. Only finished studies are bundled; two settings of one level cannot share a file."""
    from mixunlearn.data import parse_forget_spec
    from mixunlearn.tune import write_bundle

    by_level: dict[str, tuple[str, list[dict]]] = {}
    for forget in args.settings:
        level = parse_forget_spec(forget).level
        if level in by_level and by_level[level][0] != forget:
            raise SystemExit(f"bundle: {by_level[level][0]} and {forget} are both {level}-level; bundle one of them")
        docs = by_level.setdefault(level, (forget, []))[1]
        base = out / "tables" / folder(forget)
        shipped, tuned, _ = table_rows(base, forget, out, args.trials)
        floor = floor_gap(base / "floor" / "floor.json")
        for method in methods_for(forget, args.methods):
            if study_finished(out, forget, method, args.trials):
                doc = best_doc(out, forget, method)
                # what the tables measured on the test split, so the app can say it beside the
                # validation gaps
                row_s, row_t = shipped.get(method), tuned.get(method)
                if row_s and row_t:
                    doc["test"] = {"seeds": args.seeds, "shipped_gap": float(row_s["gap_to_retrain"]),
                                   "tuned_gap": float(row_t["gap_to_retrain"]),
                                   "floor": round(floor[0], 4) if floor else None}
                docs.append(doc)
            else:
                print(f"[{forget} {method}] no finished study ({args.trials} trials): not bundled", flush=True)
    written = []
    for level, (forget, docs) in by_level.items():
        if docs:
            written.append(write_bundle(docs, DATASET, RECIPE, level,
                                        made_by=f"bench/tune_all.py --settings {forget} --trials {args.trials} "
                                                f"--tune-seeds {','.join(map(str, args.tune_seeds))}"))
            print(f"bundled {len(docs)} tuning result(s) of {forget}: {written[-1]}", flush=True)
    return written


def tune_one(args, forget: str, method: str, where: Path) -> None:
    from mixunlearn.tune import TuneTask, run_tuning

    task = TuneTask(dataset=DATASET, forget=forget, method=method, seeds=tuple(args.tune_seeds),
                    recipe=RECIPE, device=args.device, download=DATASET == "digits",
                    max_time_ratio=args.max_time_ratio)
    start = time.time()
    say = lambda text, m=method, f=forget: print(f"[{f} {m}] {text}", flush=True)  # noqa: E731
    if args.ray:
        from mixunlearn import ray_grid, tune_ray

        ray_grid.connect(args.ray)
        res = tune_ray.run_tuning_ray(task, args.trials, where, threads=args.threads or 1, write=say)
    else:
        res = run_tuning(task, args.trials, where, write=say)
    b = res.best
    print(f"[{forget} {method}] {b['trials']} complete, {b['failed']} failed, best gap {b['gap']}, "
          f"{res.ran} trial(s) this run in {time.time() - start:.0f} s", flush=True)


def bench_cmd(out_dir: Path, forget: str, methods: list[str], seeds: list[int], params_from: list[Path],
              args, params: list[str] = ()) -> list[str]:
    cmd = [sys.executable, "-m", "mixunlearn", "bench", "--dataset", DATASET, "--forget", forget,
           "--recipe", RECIPE, "--methods", ",".join(["retrain", *methods]), "--seeds", ",".join(map(str, seeds)),
           "--no-download", "--quiet", "--out", str(out_dir), "--device", args.device]
    for p in params_from:
        cmd += ["--params-from", str(p)]
    for p in params:
        cmd += ["--param", p]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.ray:
        cmd += ["--ray", args.ray]
    return cmd


def tables_phase(args, out: Path) -> None:
    for forget in args.settings:
        methods = methods_for(forget, args.methods)
        base = out / "tables" / folder(forget)
        # A tuned row needs a finished study (all --trials counted): a running study's best.json is
        # a snapshot, and benching it would put a half-tuned row in the table.
        tuned = [m for m in methods if study_finished(out, forget, m, args.trials)]
        missing = sorted(set(methods) - set(tuned))
        if missing:
            print(f"[{forget}] no finished study ({args.trials} trials) for {', '.join(missing)}: their tuned "
                  f"rows are left out", flush=True)
        # The shipped rows with what a method chooses itself fixed on validation, as its study's
        # trial 0 chose it (SCRUB+R's rewind epoch; no test label is read to choose it).
        chosen = [f"{m}.{k}={v}" for m in methods
                  for k, v in (best_doc(out, forget, m).get("shipped_chosen_on_validation") or {}).items()]
        part = getattr(args, "part", "all")
        if part in ("all", "shipped"):
            subprocess.run(bench_cmd(base / "shipped", forget, methods, args.seeds, [], args, chosen), check=True,
                           cwd=ROOT)
        # A study whose best trial is trial 0 (the shipped settings, with trial 0's own choices) has
        # its tuned row equal to its shipped row -- same settings, seeds and threads give the same
        # metrics -- so it is not run twice; comparison() shows the shipped row as "tuned = shipped".
        rerun = [m for m in tuned if not best_is_shipped(out, forget, m)]
        if rerun and part in ("all", "tuned"):
            files = [study_dir(out, forget, m) / "best.json" for m in rerun]
            subprocess.run(bench_cmd(base / "tuned", forget, rerun, args.seeds, files, args), check=True, cwd=ROOT)
        floor = base / "floor"
        alt = getattr(args, "floor_alt", 2)
        if part in ("all", "floor") and floor_alts(floor / "floor.json", args.seeds) < alt:
            # (more Retrains than a stored floor had: the stored ones load from the model cache)
            subprocess.run([sys.executable, "bench/retrain_floor.py", "--dataset", DATASET, "--forget", forget,
                            "--seeds", ",".join(map(str, args.seeds)), "--recipe", RECIPE, "--out", str(floor),
                            "--alt", str(alt), "--threads", str(args.threads or 1)], check=True, cwd=ROOT)
        text = comparison(base, forget, out, args.trials)
        base.mkdir(parents=True, exist_ok=True)
        (base / "comparison.md").write_text(text + "\n")
        print(text, flush=True)


def floor_alts(path: Path, seeds: list[int]) -> int:
    """How many independent Retrains a stored floor.json holds for every one of ``seeds`` (0: none,
    or a seed of the tables missing: a floor measured on other seeds is measured again)."""
    if not path.is_file():
        return 0
    rows = json.loads(path.read_text()).get("rows") or []
    return min(len({r["alt"] for r in rows if r["seed"] == s}) for s in seeds) if seeds else 0


def best_doc(out: Path, forget: str, method: str) -> dict:
    """A study's best.json ({} before its first trial)."""
    best = study_dir(out, forget, method) / "best.json"
    return json.loads(best.read_text()) if best.is_file() else {}


def study_finished(out: Path, forget: str, method: str, trials: int) -> bool:
    from mixunlearn.tune import trials_counted

    return trials_counted(best_doc(out, forget, method)) >= trials


def best_is_shipped(out: Path, forget: str, method: str) -> bool:
    return bool(best_doc(out, forget, method).get("best_is_shipped"))


def _rows(path: Path) -> dict[str, dict]:
    import csv

    if not path.is_file():
        return {}
    with path.open() as fh:
        return {r["method"]: r for r in csv.DictReader(fh)}


def _f(v, digits: int = 2) -> str:
    try:
        return f"{float(v):.{digits}f}"
    except (TypeError, ValueError):
        return "–"


def table_rows(base: Path, forget: str, out: Path, trials: int) -> tuple[dict, dict, set[str]]:
    """The tables' shipped and tuned rows per method; a finished study whose best trial is the
    shipped one (not benched twice) gets its shipped row as its tuned row. Also returns those
    methods."""
    shipped, tuned = _rows(base / "shipped" / "table.csv"), _rows(base / "tuned" / "table.csv")
    same = {m for m in shipped if m not in tuned and best_is_shipped(out, forget, m) and study_finished(
        out, forget, m, trials)}
    tuned.update({m: shipped[m] for m in same})
    return shipped, tuned, same


def comparison(base: Path, forget: str, out: Path, trials: int = 20) -> str:
    """One table: per method its shipped and tuned rows (test split, mean over seeds)."""
    shipped, tuned, same = table_rows(base, forget, out, trials)
    level = "class" if forget.startswith("class") else "data"
    keys = {"class": ["test_r", "test_f", "asr"], "data": ["train_r", "train_f", "test", "asr"]}[level]
    head = ["method", "settings", *keys, "gap", "× Retrain", "val gap (study)"]
    lines = [f"**{DATASET} {forget}, recipe {RECIPE}, test split** (shipped vs tuned on validation)", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in [m for m in shipped if m != "retrain"]:
        for label, rows in (("shipped", shipped), ("tuned", tuned)):
            r = rows.get(name)
            if r is None:
                continue
            b = best_doc(out, forget, name)
            val = _f(b["shipped_gap"] if label == "shipped" else b["gap"]) if b else ""
            cells = [f"{_f(r.get(k))} ± {_f(r.get(k + '_std'))}" for k in keys]
            if label == "tuned" and name in same:
                label = "tuned = shipped"
            lines.append("| " + " | ".join([name, label, *cells, _f(r.get("gap_to_retrain")),
                                            _f(r.get("time_ratio_to_retrain"), 3), val]) + " |")
    if "scrub_r" in shipped:
        lines += ["", "SCRUB+R's rewind epoch (its choice among epochs + 1 checkpoints by the error on held-out "
                      "examples of the forget set's classes) is the one its rule picked on the validation seeds "
                      "of its study (trial 0 for the shipped row, the best trial for the tuned row): no test "
                      "label is read to choose it."]
    floor = floor_gap(base / "floor" / "floor.json")
    if floor is not None:
        mean, sd, n = floor
        lines += ["", f"Independent-Retrain floor (the gap of another Retrain to the task's, from the seed means "
                      f"as the rows): {mean:.2f}" + (f" ± {sd:.2f} over {n} Retrains per seed" if n > 1 else "")
                  + " (bench/retrain_floor.py)."]
    lines += ["", *ranking(shipped, tuned, floor)]
    return "\n".join(lines)


def floor_gap(path: Path) -> tuple[float, float, int] | None:
    """The floor as the tables measure a method: per independent Retrain index (one alt Retrain per
    seed), the gap of its seed-mean metrics to the task Retrain's seed-mean metrics
    (bench/retrain_floor.py's ``protocol_gap``, as its own table); then mean and sample sd over the
    indices, and their count."""
    import importlib.util
    import statistics

    if not path.is_file():
        return None
    rows = json.loads(path.read_text()).get("rows") or []
    if not rows:
        return None
    spec = importlib.util.spec_from_file_location("retrain_floor", ROOT / "bench" / "retrain_floor.py")
    floor_mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(floor_mod)
    level = rows[0]["level"]
    gaps = [floor_mod.protocol_gap([r for r in rows if r["alt"] == a], level) for a in sorted({r["alt"] for r in rows})]
    return statistics.fmean(gaps), (statistics.stdev(gaps) if len(gaps) > 1 else 0.0), len(gaps)


def ranking(shipped: dict[str, dict], tuned: dict[str, dict], floor: tuple | None) -> list[str]:
    """Plain lines: which method is closest to Retrain on the test split at shipped settings and at
    the settings its study chose on validation (a method without a tuned row keeps its shipped one;
    no row is picked by its test gap), and where MixUnlearn stands against the floor."""
    def order(rows: dict[str, dict]) -> list[tuple[float, str]]:
        out = []
        for name, r in rows.items():
            try:
                gap = float(r.get("gap_to_retrain"))
            except (TypeError, ValueError):
                continue
            if name != "retrain" and gap == gap:
                out.append((gap, name))
        return sorted(out)

    lines = []
    for label, rows in (("shipped", shipped), ("tuned", {**shipped, **tuned})):
        ranked = order(rows)
        if not ranked:
            continue
        top = ", ".join(f"{n} {g:.2f}" for g, n in ranked[:5])
        mine = [f"{n} {g:.2f} (rank {i + 1} of {len(ranked)})" for i, (g, n) in enumerate(ranked)
                if n.startswith("mixunlearn")]
        line = f"- {label.capitalize()} settings, closest first: {top}. MixUnlearn: {'; '.join(mine) or 'no row'}."
        if floor is not None:
            ours = "".join(f"; {n} minus floor: {g - floor[0]:+.2f}" for g, n in ranked if n.startswith("mixunlearn"))
            line += f" Closest minus floor: {ranked[0][0] - floor[0]:+.2f}{ours}."
        pending = sorted(n for g, n in ranked if n not in tuned) if label == "tuned" else []
        if pending:  # a partial table says which rows are not tuned ones
            line += f" No tuned row (yet), so the shipped row stands in: {', '.join(pending)}."
        lines.append(line)
    return lines


def status(args, out: Path) -> None:
    """Per study: trials done, seconds a trial (method and scoring, measured); the time left, with a
    study that has no trial yet counted at the mean of the measured ones."""
    from mixunlearn.tune import trials_counted

    rows, walls = [], []
    for forget in args.settings:
        for method in methods_for(forget, args.methods):
            b = best_doc(out, forget, method)
            n = trials_counted(b)
            wall = b.get("trial_wall_seconds_mean")
            if wall:
                walls.append(wall)
            rows.append((forget, method, n, wall))
    fallback = sum(walls) / len(walls) if walls else None
    left_s, left = 0.0, 0
    for forget, method, n, wall in rows:
        todo = max(0, args.trials - n)
        left += todo
        left_s += todo * (wall or fallback or 0.0)
        print(f"{forget:<14} {method:<22} {n:>3}/{args.trials} trials" + (f", {wall:.0f} s a trial" if wall else ""))
    print(f"{left} trial(s) left" + (f", about {left_s / 3600:.1f} h of worker time at the measured costs "
                                     f"(wall time: that / --jobs)" if fallback else ""))
    recent = finished_since(out, 3600.0)
    if recent:
        print(f"{recent} trial(s) finished in the last hour (all workers)"
              + (f": at that pace about {left / recent:.1f} h left" if left else ""))


def finished_since(out: Path, seconds: float) -> int:
    """Trials of every study under ``out`` that ended (complete, failed, pruned) in the last ``seconds``
    (read from the studies' SQLite files; the sweep's measured pace)."""
    import datetime as dt
    import sqlite3

    since = dt.datetime.now() - dt.timedelta(seconds=seconds)
    n = 0
    for db in (out / "tune").glob("*/*/study.db"):
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
                rows = con.execute("SELECT datetime_complete FROM trials "
                                   "WHERE datetime_complete IS NOT NULL").fetchall()
        except sqlite3.Error:
            continue
        n += sum(dt.datetime.fromisoformat(r[0]) >= since for r in rows)
    return n


def _short(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v).lower() if isinstance(v, bool) else str(v)


def current_summary(where: Path) -> dict | None:
    """The study's best.json document computed now from its study.db (by this code: a study run by
    an older build gets today's fields), else the best.json on disk, else None."""
    db = where / "study.db"
    if db.is_file():
        import optuna

        from mixunlearn.tune import summary

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = f"sqlite:///{db.resolve()}"
        names = optuna.get_all_study_names(storage)
        if names:
            return summary(optuna.load_study(study_name=names[0], storage=storage))
    best = where / "best.json"
    return json.loads(best.read_text()) if best.is_file() else None


def validation_table(args, out: Path) -> str:
    """Markdown, per setting: every study's validation gap at the shipped settings (trial 0) and at
    its best trial, with the trial counts and the best trial's settings and cost. Validation only."""
    from mixunlearn.tune import trials_counted

    parts = []
    for forget in args.settings:
        lines = [f"**{DATASET} {forget}, recipe {RECIPE}, validation split (seeds "
                 f"{','.join(map(str, args.tune_seeds))})**", "",
                 "| method | trials: complete / failed / stopped over the cap | val gap shipped | val gap tuned "
                 "| best trial | best × Retrain | a trial costs × Retrain | best settings |",
                 "|---|---|---|---|---|---|---|---|"]
        rows = []
        for method in methods_for(forget, args.methods):
            b = current_summary(study_dir(out, forget, method))
            if b is None:
                continue
            n = trials_counted(b)
            done = n >= args.trials
            params = "shipped" if b.get("best_is_shipped") else ", ".join(
                f"{k} {_short(v)}" for k, v in b.get("params", {}).items())
            rows.append((b.get("gap") if b.get("gap") is not None else float("inf"), "| " + " | ".join([
                method + ("" if done else f" (running, {n}/{args.trials})"),
                f"{b.get('trials', 0)} / {b.get('failed', 0)} / {b.get('stopped_over_cap', 0)}",
                _f(b.get("shipped_gap")), _f(b.get("gap")), str(b.get("best_trial")),
                _f(b.get("best_time_ratio"), 3), _f(b.get("trial_wall_ratio_mean"), 2), params]) + " |"))
        lines += [r for _, r in sorted(rows, key=lambda t: t[0])]
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def main() -> int:
    global DATASET, RECIPE
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="bench/out/tune_all")
    p.add_argument("--phase", choices=("tune", "tables", "publish", "bundle", "all"), default="all",
                   help="publish: copy every finished study's best.json and study.db to the app's folder "
                        "($MIXUNLEARN_HOME/tuned), so its Unlearn page offers the tuned settings; bundle: "
                        "write the finished studies' best settings into the package (mixunlearn/tuned/), "
                        "what the app offers on a fresh install")
    p.add_argument("--settings", default=";".join(SETTINGS), help="forget specs separated by ';'")
    p.add_argument("--dataset", default=DATASET, help="(a smoke test on digits: --dataset digits)")
    p.add_argument("--recipe", default=RECIPE)
    p.add_argument("--methods", default=None, help="only these methods (comma-separated; default: every one)")
    p.add_argument("--trials", type=int, default=20, help="trials per study (the total; >= 20 for the comparison)")
    p.add_argument("--tune-seeds", default="0,1", help="validation seeds every study averages over")
    p.add_argument("--seeds", default="0,1,2", help="test-split seeds of the tables")
    p.add_argument("--max-time-ratio", type=float, default=0.3)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads of a trial (on Ray also its CPUs; default there 1, here torch's own)")
    p.add_argument("--jobs", type=int, default=1,
                   help="phase tune: this many processes at once over disjoint studies (use --threads 1 "
                        "with --jobs = cores: small CNNs run faster side by side than threaded)")
    p.add_argument("--first", default=FIRST,
                   help="these methods' studies first, in this order (default: the closest to Retrain at their "
                        "shipped settings on Fashion-MNIST class 0, fast recipe, test split)")
    p.add_argument("--ray", default=None, metavar="auto|local|ADDRESS", help="trials and bench cells on Ray")
    p.add_argument("--floor-alt", type=int, default=5,
                   help="independent Retrains per seed for the floor (a stored floor with fewer is extended)")
    p.add_argument("--part", choices=("all", "shipped", "tuned", "floor", "compare"), default="all",
                   help="tables phase: only this bench (run shipped and tuned as two processes at once), or "
                        "only write comparison.md from what exists")
    p.add_argument("--status", action="store_true", help="print what is done and stop")
    p.add_argument("--markdown", action="store_true",
                   help="print the studies' validation gaps (shipped, tuned) as markdown tables and stop")
    args = p.parse_args()
    args.settings = [s for s in args.settings.split(";") if s]
    args.methods = [m for m in args.methods.split(",") if m] if args.methods else None
    args.tune_seeds = [int(s) for s in args.tune_seeds.split(",") if s]
    args.seeds = [int(s) for s in args.seeds.split(",") if s]
    DATASET, RECIPE = args.dataset, args.recipe
    out = Path(args.out)
    if args.status:
        status(args, out)
        return 0
    if args.markdown:
        print(validation_table(args, out))
        return 0
    if args.phase in ("tune", "all"):
        if args.jobs > 1 and not args.ray:
            rc = tune_jobs(args)
            if rc:
                return rc
        else:
            tune_phase(args, out)
    if args.phase in ("tables", "all"):
        tables_phase(args, out)
    if args.phase == "publish":
        publish_phase(args, out)
    if args.phase == "bundle":
        bundle_phase(args, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
