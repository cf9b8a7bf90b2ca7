"""Command line: ``python -m mixunlearn {list, run, bench, evaluate, tune}``.

Bad arguments give one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
from collections.abc import Sequence
from pathlib import Path

# OpenMP threads that spin while waiting burn the CPU that the other thread (or another process)
# needs: on 2 shared cores, digits training ran 5x slower with the default (active) policy. Must be
# set before torch loads its OpenMP runtime, so here, where ``python -m mixunlearn`` starts; an
# explicit setting in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(EXIT_USAGE)


class UsageError(ValueError):
    pass


def _methods_arg(text: str) -> tuple[str, ...]:
    names = tuple(m.strip() for m in text.split(",") if m.strip())
    if not names:
        raise argparse.ArgumentTypeError("no method given")
    return names


# 0..2**32 - 1: the range every consumer of a seed accepts (mixunlearn.utils.SEED_MAX; not imported
# here so that ``--help`` and argument errors need no torch).
SEED_MAX = 2**32 - 1
SHOW_MAX = 60  # the longest user value an error message echoes in full


def _shorten(text: str, limit: int = SHOW_MAX) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _seed_arg(text: str) -> int:
    """A seed in 0..2**32-1, checked before any work; the message names the seed."""
    shown = _shorten(text)
    digits = text.strip().lstrip("+").replace("_", "").lstrip("0")
    if digits.isdigit() and len(digits) > 20:  # int() of a huge text is slow or refused
        raise argparse.ArgumentTypeError(f"seed {shown} is out of range; seeds must be 0..{SEED_MAX} (2**32 - 1)")
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"seed must be a non-negative integer, got {shown!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"seed must be a non-negative integer, got {shown!r}")
    if v > SEED_MAX:
        raise argparse.ArgumentTypeError(f"seed {v} is out of range; seeds must be 0..{SEED_MAX} (2**32 - 1)")
    return v


def _seeds_arg(text: str) -> tuple[int, ...]:
    seeds = tuple(_seed_arg(s.strip()) for s in text.split(",") if s.strip())
    if not seeds:
        raise argparse.ArgumentTypeError("no seed given")
    repeated = [s for i, s in enumerate(seeds) if s in seeds[:i]]
    if repeated:  # one seed counted twice would fake the spread (std 0) and the number of seeds
        raise argparse.ArgumentTypeError(f"seed {repeated[0]} is given more than once in {_shorten(text)!r}; "
                                         "give each seed once")
    return seeds


# The strong evaluation's pool sizes (mixunlearn.strong_eval.POOL_MIN/POOL_MAX; not imported here so
# that argument errors need no torch): with 2 models or fewer the challenge's score has no bucket.
POOL_MIN, POOL_MAX = 3, 512


def _bounded_int(what: str, lo: int, hi: int):
    def parse(text: str) -> int:
        shown = _shorten(text)
        digits = text.strip().lstrip("+-").replace("_", "")
        if digits.isdigit() and len(digits) > 20:
            raise argparse.ArgumentTypeError(f"{what} {shown} is out of range; allowed {lo}..{hi}")
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be an integer, got {shown!r}") from None
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"{what} {v} is out of range; allowed {lo}..{hi}")
        return v

    return parse


def _pool_arg(text: str) -> int:
    try:
        return _bounded_int("pool size", POOL_MIN, POOL_MAX)(text)
    except argparse.ArgumentTypeError as exc:
        if "out of range" in str(exc):
            raise argparse.ArgumentTypeError(f"{exc} (with 2 models or fewer the challenge's score has no "
                                             "bucket; it used 512)") from None
        raise


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="mixunlearn", description="MixUnlearn: machine unlearning lab (python -m mixunlearn)")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)
    sub.required = True
    lst = sub.add_parser("list", help="datasets, models and methods with one-line help")

    def plugin(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--plugin", action="append", default=[], metavar="FILE.py",
                        help="import FILE.py first: its @register_method methods join the registry "
                             "(repeatable; the code runs with your rights, see docs/plugins.md)")

    plugin(lst)

    def task(sp: argparse.ArgumentParser, recipe_of: str) -> None:
        """The options every experiment command shares: the task, where its data is, the device."""
        sp.add_argument("--dataset", default="digits", help="dataset name (default: digits, offline)")
        sp.add_argument("--forget", default="class:3",
                        help="class:K | data:CLASSES:FRACTION (e.g. data:5-9:0.4) | noisy:CLASSES:FRACTION")
        sp.add_argument("--model", default=None, help="model name (default: the dataset's)")
        sp.add_argument("--recipe", default=None, help=f"training recipe of {recipe_of}")
        sp.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
        sp.add_argument("--data-root", default=None, help="folder with the dataset files")
        sp.add_argument("--param", action="append", default=[], metavar="METHOD.FIELD=VALUE",
                        help="override a method hyper-parameter (repeatable)")
        sp.add_argument("--eval-split", choices=("test", "val"), default="test",
                        help="'val' scores on a validation split held out from D (for tuning)")
        sp.add_argument("--no-download", action="store_true", help="never try to download data")
        sp.add_argument("--quiet", action="store_true", help="no progress bars")
        plugin(sp)

    def common(sp: argparse.ArgumentParser) -> None:
        task(sp, "the original and Retrain")
        sp.add_argument("--methods", type=_methods_arg, default=("retrain", "finetune", "neggrad"),
                        help="comma-separated method names (Retrain is always run: it is the yardstick)")
        sp.add_argument("--no-attacks", action="store_true", help="skip the membership-inference attacks")
        sp.add_argument("--out", default=None, help="output folder")
        sp.add_argument("--original", default=None, metavar="FILE.safetensors",
                        help="start from these trained weights (architecture: --model) instead of training "
                             "the original model")
        sp.add_argument("--retrained", default=None, metavar="FILE.safetensors",
                        help="Retrain's weights from this file instead of training Retrain by the recipe")
        sp.add_argument("--params-from", action="append", default=[], metavar="FILE",
                        help="a tuning result (tune's best.json) whose params apply to its method; repeatable, "
                             "one file per method (a --param of the same field wins)")
        sp.add_argument("--tuned", action="store_true",
                        help="apply the tuning results for this data set, recipe and level to each method that "
                             "has one: MixUnlearn's own (Fashion-MNIST, fast recipe) or yours (tune --publish); "
                             "--params-from and --param win")

    run = sub.add_parser("run", help="one seed: all methods run and scored against Retrain -> OUT/results.json")
    common(run)
    run.add_argument("--seed", type=_seed_arg, default=0)
    run.add_argument("--store", action="store_true", help="also save the run in the run store")
    run.add_argument("--estimate-only", action="store_true",
                     help="print the estimated duration per phase (a short timed probe) and stop")

    # "resolve": the grid form takes --dataset and --forget more than once (they replace task()'s).
    bench = sub.add_parser("bench", help="seeds x methods grid -> OUT/table.csv and OUT/table.md",
                           conflict_handler="resolve")
    common(bench)
    bench.add_argument("--dataset", action="append", default=None,
                       help="dataset name (default: digits); repeat for a grid (one OUT/DATASET-FORGET per setting)")
    bench.add_argument("--forget", action="append", default=None,
                       help="class:K | data:CLASSES:FRACTION | noisy:CLASSES:FRACTION (default class:3); "
                            "repeat for a grid (one OUT/DATASET-FORGET folder and table per setting)")
    bench.add_argument("--seeds", type=_seeds_arg, default=(0, 1, 2))
    bench.add_argument("--fresh", action="store_true",
                       help="run every seed again (default: reuse OUT/seedN.json when it answers the same config)")
    bench.add_argument("--threads", type=_bounded_int("--threads", 1, 1024), default=None,
                       help="torch intra-op threads of every cell, serial or on Ray (same seeds and threads: "
                            "same metrics); on Ray also each cell's CPU request (default 1 there)")
    bench.add_argument("--ray", nargs="?", const="auto", default=None, metavar="auto|local|ADDRESS",
                       help="run the cells as Ray tasks: auto = a running cluster (ray start --head), "
                            "local = a private one on this machine, HOST:PORT = that head node (docs/ray.md)")

    rep = sub.add_parser("report", help="OUT/report.html from a run's OUT/results.json: tables, charts, the "
                                        "generator's images; one self-contained file that opens offline")
    rep.add_argument("out", help="the run's output folder (written by 'run --out OUT')")
    rep.add_argument("--run", default=None, metavar="RUN_ID",
                     help="take the run from the run store instead of OUT/results.json (OUT receives report.html)")
    tu = sub.add_parser("tune", help="tune one method's hyper-parameters with Optuna on the validation split "
                                     "-> OUT/best.json (docs/baselines.md)")
    tu.add_argument("--dataset", default="digits", help="dataset name (default: digits, offline)")
    tu.add_argument("--forget", default="class:3", help="class:K | data:CLASSES:FRACTION | noisy:CLASSES:FRACTION")
    tu.add_argument("--method", required=True, help="the method to tune (any registered one but retrain)")
    tu.add_argument("--trials", type=_bounded_int("--trials", 1, 100_000), default=20,
                    help="total trials of the study (a rerun continues it up to this many); trial 0 = shipped")
    tu.add_argument("--seeds", type=_seeds_arg, default=(0,), help="tuning seeds; the gap is averaged over them")
    tu.add_argument("--out", required=True, help="study folder: OUT/study.db (unless --storage) and OUT/best.json")
    tu.add_argument("--recipe", default=None, help="training recipe of the original and Retrain")
    tu.add_argument("--model", default=None, help="model name (default: the dataset's)")
    tu.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    tu.add_argument("--data-root", default=None, help="folder with the dataset files")
    tu.add_argument("--no-download", action="store_true", help="never try to download data")
    tu.add_argument("--storage", default=None, help="Optuna storage URL (default sqlite:///OUT/study.db)")
    tu.add_argument("--max-time-ratio", type=float, default=0.3,
                    help="a trial slower than this x a Retrain of the same process is infeasible (default 0.3)")
    tu.add_argument("--threads", type=_bounded_int("--threads", 1, 1024), default=None,
                    help="torch threads (on Ray: of every trial, and its CPU request; default 1 there)")
    tu.add_argument("--ray", nargs="?", const="auto", default=None, metavar="auto|local|ADDRESS",
                    help="run trials as Ray tasks on the cluster bench --ray uses (docs/ray.md)")
    tu.add_argument("--publish", action="store_true",
                    help="copy best.json and the study to $MIXUNLEARN_HOME/tuned/ for the app")
    tu.add_argument("--estimate-only", action="store_true", help="print the per-trial estimate and stop")
    tu.add_argument("--quiet", action="store_true", help="no progress lines of the original/Retrain training")
    tu.add_argument("--plugin", action="append", default=[], metavar="FILE.py",
                    help="import this file's @register_method methods first (repeatable; docs/plugins.md)")

    ev = sub.add_parser("evaluate", help="strong evaluation from pools of N retrained and N unlearned models "
                                         "(challenge score, U-LiRA, relearn, probe) -> OUT/evaluation.json")
    task(ev, "the original and the retrained pools")
    ev.add_argument("--methods", type=_methods_arg, default=("retrain", "finetune", "mixunlearn"),
                    help="comma-separated method names; 'retrain' = Retrain with other seeds (the sanity row)")
    ev.add_argument("--pool", type=_pool_arg, default=16,
                    help=f"models per pool, {POOL_MIN}..{POOL_MAX} (the challenge used 512)")
    ev.add_argument("--seed", type=_seed_arg, default=0, help="base seed: the split, the original and every pool seed")
    ev.add_argument("--epochs", type=_bounded_int("--epochs", 1, 500), default=None,
                    help="override the recipe's epochs (original and retrained pools; for quick looks)")
    ev.add_argument("--depth-models", type=_bounded_int("--depth-models", 0, POOL_MAX), default=3,
                    help="models per pool given the relearn and linear-probe checks (default 3)")
    ev.add_argument("--relearn-cap", type=_bounded_int("--relearn-cap", 1, 100_000), default=500,
                    help="most fine-tuning steps of the relearn check (default 500)")
    ev.add_argument("--out", default=None, help="output folder (default runs/eval-DATASET-FORGET-nN)")
    ev.add_argument("--estimate-only", action="store_true",
                    help="print the estimated duration per part (short timed probes) and stop")
    ev.add_argument("--ray", nargs="?", const="auto", default=None, metavar="auto|local|ADDRESS",
                    help="train the retrained pools' members as Ray tasks (one model per task) before the "
                         "evaluation, which then reads them from the cache (docs/ray.md)")
    return p


# --------------------------------------------------------------------------- progress


class TqdmProgress:
    """Turns progress events into a tqdm bar (one at a time, per source); messages go to stderr.
    Bars are drawn only on a terminal; elsewhere only the messages are printed."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled and sys.stderr.isatty()
        self.bar = None
        self.source = None

    def __call__(self, ev) -> None:
        from tqdm import tqdm

        if ev.message:
            tqdm.write(f"[{ev.source}] {ev.message}", file=sys.stderr)
        if not self.enabled or not ev.total or not ev.losses:
            return
        if self.bar is None or self.source != ev.source or self.bar.total != ev.total:
            self.close()
            self.bar = tqdm(total=ev.total, desc=ev.source, file=sys.stderr, leave=False, dynamic_ncols=True)
            self.source = ev.source
        self.bar.n = ev.step
        self.bar.set_postfix({k: f"{v:.3g}" for k, v in list(ev.losses.items())[:3]}, refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.bar = None


# --------------------------------------------------------------------------- commands


def cmd_list() -> int:
    from .datasets import DATASETS, is_available
    from .methods import list_methods
    from .models import MODELS
    from .training import DEFAULT_RECIPE, RECIPES, TABLE_RECIPE

    print("Datasets:")
    for name, info in DATASETS.items():
        avail = "available" if is_available(name) else "files not found (see --data-root)"
        print(f"  {name:<14} {info.title}; model {info.default_model}, recipe {DEFAULT_RECIPE[name]} "
              f"(tables: {TABLE_RECIPE[name]}); {avail}")
    print("Models:")
    for name, entry in MODELS.items():
        print(f"  {name:<14} {entry.summary}")
    print("Recipes:")
    for name, r in RECIPES.items():
        tag = " [a reference recipe from the literature; slow on a CPU]" if r.paper else ""
        print(f"  {name:<14} {r.description}{tag}")
    print("Methods:")
    for m in sorted(list_methods(), key=lambda s: (s.name != "retrain", s.name)):
        kinds = "" if len(m.kinds) == 3 else f" [{'/'.join(m.kinds)} only]"
        print(f"  {m.name:<20} ({m.labels}) {m.summary}{kinds}")
    print("Forget specs: class:K | data:CLASSES:FRACTION (paper default data:5-9:0.4) | noisy:CLASSES:FRACTION")
    print("Your own data: --dataset imagefolder:PATH (folders of images per class) | npz:FILE "
          "(x_train, y_train, x_test, y_test); see docs/plugins.md")
    return 0


def param_overrides(items: Sequence[str]) -> dict[str, dict[str, str]]:
    """``--param`` values by method and field; a field given twice is an error (the last one used
    to win silently)."""
    from .methods import parse_param_overrides

    out: dict[str, dict[str, str]] = {}
    for item in items:
        try:
            one = parse_param_overrides([item])
        except ValueError as exc:
            raise ValueError(_shorten_inputs(str(exc), [item])) from None
        for method, fields in one.items():
            for name, value in fields.items():
                if name in out.get(method, {}):
                    raise ValueError(f"--param {_shorten(method)}.{_shorten(name)} is given twice "
                                     f"({_shorten(out[method][name])!r} and {_shorten(value)!r}); give it once")
                out.setdefault(method, {})[name] = value
    return out


def _shorten_inputs(message: str, texts: Sequence[str | None]) -> str:
    """``message`` with every over-long user text in it (and the integer it reads as) cut to 60
    characters: a 4,000-digit value is never echoed in full."""
    long = set()
    for t in texts:
        if not t or len(t) <= SHOW_MAX:
            continue
        long.add(t)
        if len(t.strip()) < 4000 and t.strip().lstrip("+-").isdigit():
            long.add(str(int(t)))
    for t in sorted(long, key=len, reverse=True):
        message = message.replace(t, _shorten(t))
    return message


def _params_with_files(args, recipe: str | None = None) -> dict[str, dict]:
    """``--param`` values on top of the ``--params-from`` files' (each file checked first), on top
    of the published tuning results with ``--tuned`` (``recipe``: the run's resolved recipe)."""
    params = param_overrides(args.param)
    files = getattr(args, "params_from", None) or []
    from .tune import params_from_files

    tuned = _published_params(args, recipe) if getattr(args, "tuned", False) and recipe else {}
    for method, fields in params_from_files(files, list(args.methods)).items() if files else ():
        tuned[method] = fields  # a file replaces the published result of its method
    for method, fields in params.items():
        tuned.setdefault(method, {}).update(fields)
    return tuned


def _published_params(args, recipe: str) -> dict[str, dict]:
    """``{method: params}`` of the tuning results published for this task (tune.published), for the
    run's methods that have one; says once which methods got them. None at all is an error."""
    from .data import parse_forget_spec
    from .tune import published

    level = parse_forget_spec(args.forget).level
    found = published(args.dataset, recipe, level)
    have = [m for m in args.methods if m in found]
    if not have:
        raise ValueError(f"--tuned: no tuning result for {args.dataset} ({recipe}, {level}-level) and methods "
                         f"{', '.join(m for m in args.methods if m != 'retrain')}; tune one with "
                         f"`python -m mixunlearn tune ... --publish`, or drop --tuned")
    if not getattr(args, "_tuned_said", False):
        args._tuned_said = True
        without = [m for m in args.methods if m not in found and m != "retrain"]
        print(f"--tuned: tuned settings for {', '.join(have)}"
              + (f"; shipped settings for {', '.join(without)} (no tuning result)" if without else ""),
              file=sys.stderr)
    return {m: dict(found[m]["params"]) for m in have}


def _experiment_config(args, seed: int):
    from .experiment import ExperimentConfig

    recipe = None
    if getattr(args, "tuned", False):  # the published results are per recipe (resolved as the config does)
        from .training import default_recipe, get_recipe

        try:
            recipe = (get_recipe(args.recipe) if args.recipe else default_recipe(args.dataset)).name
        except ValueError:
            recipe = None  # the full config below says what is wrong
    params = _params_with_files(args, recipe)
    inputs = [args.dataset, args.forget, args.model, args.recipe, args.device, *args.methods,
              *(t for m, fields in params.items() for f, v in fields.items() for t in (m, f, v))]
    try:
        cfg = ExperimentConfig(
            dataset=args.dataset, forget=args.forget, methods=tuple(args.methods), seed=seed, model=args.model,
            recipe=args.recipe, device=args.device, data_root=args.data_root, params=params,
            eval_split=args.eval_split, attacks=not args.no_attacks, download=not args.no_download,
            plugins=tuple(args.plugin), original=args.original, retrained=args.retrained,
        ).resolved()
    except ValueError as exc:
        raise ValueError(_shorten_inputs(str(exc), inputs)) from None
    return cfg


def _check_data(cfgs) -> None:
    """Load the data set and build every seed's split before any progress line is printed, so
    missing, damaged or undownloadable files and an empty forget set are exactly one error line."""
    from .data import make_split
    from .datasets import load_dataset

    first = cfgs[0]
    dataset = load_dataset(first.dataset, first.data_root, download=first.download)
    for cfg in cfgs:
        make_split(dataset, cfg.forget, cfg.seed, eval_split=cfg.eval_split)


def cmd_run(args) -> int:
    from .datahash import data_hash
    from .estimate import estimate_experiment
    from .experiment import prepare_data, run_experiment
    from .report import TENSORS_FILE, result_tensors
    from .store import RunStore, StoreError
    from .utils import check_home, check_writable_dir, resolve_device

    cfg = _experiment_config(args, args.seed)
    out = Path(args.out or f"runs/{cfg.dataset}-{cfg.forget.replace(':', '_')}-seed{cfg.seed}")
    # Found out before the run, not after it: an --out that cannot be written, an unusable home.
    check_writable_dir(out, "--out", files=("results.json",))
    check_home()
    store = RunStore() if args.store else None
    if store:
        store.recover()  # runs left "running" by a process that is gone (kill -9) become interrupted
    # The data and the split are ready before any progress line (one error line when they are not).
    data = prepare_data(cfg, resolve_device(cfg.device))
    est = estimate_experiment(cfg, sizes=(len(data.x_train), len(data.forget_idx), len(data.x_test)),
                              data_hash=data_hash(data))
    print(f"[estimate] {est.text()}", file=sys.stderr, flush=True)
    if args.estimate_only:
        return 0
    progress = TqdmProgress(enabled=not args.quiet)
    run_id = store.begin(cfg.to_dict()) if store else None
    try:
        result = run_experiment(cfg, callbacks=[progress], data=data)
        tensors = result_tensors(result)
        not_stored = None
        if store:  # stored first: a results.json that cannot be written below loses nothing
            try:
                store.commit(run_id, result.to_json(), tensors)
            except (OSError, StoreError) as exc:  # the finished run is still written to --out below
                not_stored = exc
        progress.close()
        print(format_summary(result.to_json()))
        try:
            path = result.write(out)
            if tensors:  # the attack's per-example view and the generator snapshots, for `report`
                write_tensors(out / TENSORS_FILE, tensors)
        except OSError as exc:
            kept = (f"; the run is stored as run {run_id}" if store and not_stored is None
                    else "; the summary above has its numbers")
            raise OSError(f"could not write {out / 'results.json'} ({exc.strerror or exc}){kept}") from None
        if not_stored is not None:
            why = not_stored.strerror if isinstance(not_stored, OSError) and not_stored.strerror else not_stored
            raise StoreError(f"the run finished but could not be stored in the run store at {store.root} ({why}); "
                             f"its results were kept in {path}")
    except BaseException as exc:
        if store:  # never left "running"; a run already committed stays complete
            from .progress import RunCancelled

            status = "cancelled" if isinstance(exc, (RunCancelled, KeyboardInterrupt)) else "failed"
            try:
                store.finish_unsuccessful(run_id, status, str(exc))
            except (OSError, StoreError, sqlite3.Error):  # a store that cannot be written: the error above stands
                pass
        raise
    finally:
        progress.close()
    print(f"wrote {path}" + (f"; stored as run {run_id}" if store else ""))
    return 0


def write_tensors(path: Path, tensors: dict) -> None:
    """Tensors as safetensors, written to a temporary name and renamed over ``path``."""
    from safetensors.torch import save_file

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)


def cmd_report(args) -> int:
    import json

    from .report import TENSORS_FILE, build_report
    from .utils import atomic_write_text, check_writable_dir

    out = Path(args.out)
    tensors = None
    if args.run:
        from .store import RunStore

        store = RunStore()
        row = store.get(args.run)
        if row.status != "complete" or not row.results:
            raise ValueError(f"run {args.run} is {row.status}, not complete; it has no results to report")
        results = row.results
        tensors = store.load_tensors(args.run)
        check_writable_dir(out, "OUT", files=("report.html",))
    else:
        src = out / "results.json"
        if not src.is_file():
            raise ValueError(f"{src} not found; pass the folder a run wrote (run --out OUT), or --run RUN_ID")
        try:
            results = json.loads(src.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{src} is not a results.json document ({exc})") from None
        if not isinstance(results, dict) or not isinstance(results.get("methods"), dict):
            raise ValueError(f"{src} is not a results.json document (no 'methods')")
        if (out / TENSORS_FILE).is_file():
            from safetensors.torch import load_file

            tensors = load_file(str(out / TENSORS_FILE))
    path = atomic_write_text(out / "report.html", build_report(results, tensors))
    print(f"wrote {path}")
    return 0


def format_summary(results: dict) -> str:
    level = results["info"]["level"]
    keys = list(results["info"]["metric_set"])
    lines = [f"{'method':<22}" + "".join(f"{k:>9}" for k in keys) + f"{'gap':>8}{'seconds':>9}"]
    rows = [("original", results["original"])] + list(results["methods"].items())
    for name, rec in rows:
        if rec.get("status") == "failed":
            lines.append(f"{name:<22} FAILED: {rec.get('error', '')}")
            continue
        m = rec["metrics"]
        gap = rec.get("gap_to_retrain")
        secs = rec.get("seconds")
        note = " (cached)" if rec.get("cached") else ""
        # A metric that could not be computed (e.g. an empty split) is null in results.json.
        cells = "".join(f"{m[k]:>9.2f}" if m.get(k) is not None else f"{'n/a':>9}" for k in keys)
        lines.append(f"{name:<22}" + cells + (f"{gap:>8.2f}" if gap is not None else f"{'':>8}")
                     + (f"{secs:>9.2f}" if secs is not None else f"{'n/a':>9}") + note)
    lines.append(f"({level}-level; metrics in %; gap = mean |metric - Retrain| over {', '.join(keys)})")
    return "\n".join(lines)


def cmd_bench(args) -> int:
    """One setting (data set, forget spec) x seeds into OUT, or a grid of settings into one OUT/
    DATASET-FORGET folder each; serially in this process, or as Ray tasks with ``--ray``."""
    from .bench import run_bench, setting_folder
    from .utils import check_home, check_writable_dir

    datasets = list(dict.fromkeys(args.dataset or ["digits"]))
    forgets = list(dict.fromkeys(args.forget or ["class:3"]))
    settings = []
    for dataset in datasets:
        for forget in forgets:
            one = argparse.Namespace(**{**vars(args), "dataset": dataset, "forget": forget})
            settings.append([_experiment_config(one, s) for s in args.seeds])
    folders = [setting_folder(cfgs[0]) for cfgs in settings]
    repeated = [f for i, f in enumerate(folders) if f in folders[:i]]
    if repeated:  # e.g. class:0 and class:00, the same setting twice
        raise ValueError(f"the setting {repeated[0]} is given twice (--dataset/--forget); give it once")
    first = settings[0][0]
    if len(settings) == 1:
        out = Path(args.out or f"runs/bench-{first.dataset}-{first.forget.replace(':', '_')}")
        outs = [out]
    else:
        out = Path(args.out or "runs/bench-grid")
        outs = [out / f for f in folders]
    for cfgs, folder in zip(settings, outs):
        check_writable_dir(folder, "--out", files=("table.csv", "table.md", *(f"seed{c.seed}.json" for c in cfgs)))
    check_home()
    for cfgs in settings:
        _check_data(cfgs)
    if args.ray is not None:
        return _bench_on_ray(args, settings, outs, out)
    import torch

    threads_before = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    progress = TqdmProgress(enabled=not args.quiet)
    tables = []
    try:
        for cfgs, folder in zip(settings, outs):
            tables.append(run_bench(cfgs, folder, callbacks=[progress], reuse=not args.fresh))
    finally:
        progress.close()
        torch.set_num_threads(threads_before)
    _print_tables(tables, outs)
    return 0


def _print_tables(tables: Sequence[str], outs: Sequence[Path]) -> None:
    for table, folder in zip(tables, outs):
        print(table)
        print(f"wrote {folder / 'table.csv'} and {folder / 'table.md'}")


def _bench_on_ray(args, settings, outs, out: Path) -> int:
    try:
        from . import ray_grid
    except ImportError as exc:
        raise ValueError(f"--ray needs the ray package ({exc}); pip install 'ray>=2.60'") from None
    connected = ray_grid.connect(args.ray)  # RayUnavailable (one line, exit 2) before any work
    try:
        ray_grid.check_threads_fit(args.threads or 1)  # before any cell: one no node can take waits forever
        tables = ray_grid.run_grid_ray(list(zip(settings, outs)), threads=args.threads or 1,
                                       reuse=not args.fresh, quiet=args.quiet)
    except KeyboardInterrupt:
        sys.stderr.write(f"mixunlearn: cancelled; the outstanding Ray tasks were cancelled, every finished "
                         f"cell is in its seedN.json under {out} (run the same command again to resume)\n")
        return 130
    finally:
        if connected:
            import ray

            ray.shutdown()
    _print_tables(tables, outs)
    return 0


def cmd_tune(args) -> int:
    """Tune one method (mixunlearn.tune): every input checked before any training; an estimate
    per trial; the study in OUT (resumable); OUT/best.json written after every trial."""
    from .tune import TuneTask, default_storage, estimate_trial, publish
    from .utils import check_home, check_writable_dir

    inputs = [args.dataset, args.forget, args.model, args.recipe, args.device, args.method]
    try:
        task = TuneTask(dataset=args.dataset, forget=args.forget, method=args.method.strip(), seeds=tuple(args.seeds),
                        recipe=args.recipe, model=args.model, device=args.device, data_root=args.data_root,
                        download=not args.no_download, max_time_ratio=args.max_time_ratio,
                        plugins=tuple(args.plugin)).resolved()
    except ValueError as exc:
        raise ValueError(_shorten_inputs(str(exc), inputs)) from None
    out = Path(args.out)
    check_writable_dir(out, "--out", files=("best.json", "study.db"))
    check_home()
    _check_data([task.experiment(s) for s in task.seeds])
    storage = args.storage or default_storage(out)
    if not args.storage:
        out.mkdir(parents=True, exist_ok=True)  # the SQLite file's folder
    try:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(study_name=task.study_name, storage=storage, direction="minimize",
                                    load_if_exists=True)
    except ImportError as exc:
        raise ValueError(f"tune needs the optuna package ({exc}); pip install 'optuna>=5'") from None
    except Exception as exc:  # a storage URL that does not open: one line, exit 2
        raise ValueError(f"--storage {_shorten(storage)}: {' '.join(str(exc).split())[:200]}") from None
    done = sum(t.state.is_finished() and not t.user_attrs.get("interrupted") for t in study.get_trials(deepcopy=False))
    left = max(0, args.trials - done)
    secs, ratio, source = estimate_trial(task)
    from .estimate import format_seconds

    print(f"[estimate] {task.method} on {task.dataset} {task.forget} ({task.recipe}, seeds "
          f"{','.join(map(str, task.seeds))}): about {format_seconds(secs)} per trial ({ratio:.2f}x a Retrain of "
          f"this process; {source}); {done} trial(s) done, {left} to run: about {format_seconds(secs * left)}",
          file=sys.stderr, flush=True)
    if args.estimate_only:
        return 0
    progress = TqdmProgress(enabled=not args.quiet)
    write = lambda text: print(f"[tune] {text}", file=sys.stderr, flush=True)  # noqa: E731
    try:
        if args.ray is not None:
            try:
                from . import ray_grid, tune_ray
            except ImportError as exc:
                raise ValueError(f"--ray needs the ray package ({exc}); pip install 'ray>=2.60'") from None
            connected = ray_grid.connect(args.ray)
            try:
                result = tune_ray.run_tuning_ray(task, args.trials, out, storage=args.storage,
                                                 threads=args.threads or 1, write=write, callbacks=[progress])
            finally:
                if connected:
                    import ray

                    ray.shutdown()
        else:
            import torch

            from .tune import run_tuning

            before = torch.get_num_threads()
            if args.threads:
                torch.set_num_threads(args.threads)
            try:
                result = run_tuning(task, args.trials, out, storage=args.storage, write=write, callbacks=[progress])
            finally:
                torch.set_num_threads(before)
    except KeyboardInterrupt:
        sys.stderr.write(f"mixunlearn: cancelled; every finished trial is in the study under {out} "
                         "(run the same command again to resume)\n")
        return 130
    finally:
        progress.close()
    print(format_tuning(result.best))
    print(f"wrote {result.path}")
    if args.publish:
        print(f"published {publish(out)}")
    return 0


def format_tuning(best: dict) -> str:
    """The summary lines of a tuning result."""
    gap = best.get("gap")
    shipped = best.get("shipped_gap")
    ratio = best.get("trial_time_ratio_mean")
    lines = [f"{best['method']} on {best['dataset']} {best['forget']} ({best['recipe']}): "
             f"{best['trials']} complete trial(s), {best['failed']} failed, {best.get('infeasible', 0)} too slow",
             f"validation gap: best {gap:.3f} (trial {best['best_trial']})" if gap is not None else "no complete trial",
             ]
    if shipped is not None:
        lines.append(f"shipped defaults (trial 0): {shipped:.3f}")
    if ratio is not None:
        lines.append(f"measured cost: {best['trial_seconds_mean']:.1f} s per trial, {ratio:.3f}x a Retrain of the "
                     f"same process (best trial {best['best_time_ratio']:.3f}x)")
    lines.append("params: " + ", ".join(f"{k}={v}" for k, v in best["params"].items()))
    return "\n".join(lines)


def cmd_evaluate(args) -> int:
    """Strong evaluation: every input checked (names, ranges, --out, home, data and split) before
    the first model is trained; OUT/evaluation.json written atomically; a table printed."""
    from .data import make_split
    from .datasets import load_dataset
    from .estimate import format_seconds
    from .plugins import load_plugins
    from .strong_eval import StrongEvalConfig, format_table, run_strong_evaluation, write_evaluation
    from .strong_eval import estimate_evaluation as estimate_evaluation
    from .utils import check_home, check_writable_dir

    load_plugins(args.plugin)  # before the method names are checked
    params = param_overrides(args.param)
    inputs = [args.dataset, args.forget, args.model, args.recipe, args.device, *args.methods,
              *(t for m, fields in params.items() for f, v in fields.items() for t in (m, f, v))]
    try:
        cfg = StrongEvalConfig(
            dataset=args.dataset, forget=args.forget, methods=tuple(args.methods), pool=args.pool, seed=args.seed,
            model=args.model, recipe=args.recipe, epochs=args.epochs, device=args.device, data_root=args.data_root,
            params=params, eval_split=args.eval_split, download=not args.no_download,
            depth_models=args.depth_models, relearn_cap=args.relearn_cap,
        ).resolved()
    except ValueError as exc:
        raise ValueError(_shorten_inputs(str(exc), inputs)) from None
    out = Path(args.out or f"runs/eval-{cfg.dataset}-{cfg.forget.replace(':', '_')}-n{cfg.pool}")
    check_writable_dir(out, "--out", files=("evaluation.json",))
    check_home()
    dataset = load_dataset(cfg.dataset, cfg.data_root, download=cfg.download)
    data = make_split(dataset, cfg.forget, cfg.seed, eval_split=cfg.eval_split)
    est = estimate_evaluation(cfg, data=data)
    parts = ", ".join(f"{k} {format_seconds(v)}" for k, v in est.parts.items())
    print(f"[estimate] about {est.text()} ({est.to_train} retrained models to train, {est.cached} cached): {parts}",
          file=sys.stderr, flush=True)
    if args.estimate_only:
        return 0
    if args.ray is not None:
        _pools_on_ray(args, cfg, data)
    progress = TqdmProgress(enabled=not args.quiet)
    try:
        doc = run_strong_evaluation(cfg, callbacks=[progress], data=data)
    finally:
        progress.close()
    print(format_table(doc))
    try:
        path = write_evaluation(doc, out)
    except OSError as exc:
        raise OSError(f"could not write {out / 'evaluation.json'} ({exc.strerror or exc}); "
                      "the table above has its numbers") from None
    print(f"wrote {path}")
    return 0


def _pools_on_ray(args, cfg, data) -> None:
    """``evaluate --ray``: the retrained pools' members as Ray tasks, into this machine's cache."""
    import dataclasses

    from .training import get_recipe

    try:
        from . import ray_grid
    except ImportError as exc:
        raise ValueError(f"--ray needs the ray package ({exc}); pip install 'ray>=2.60'") from None
    recipe = get_recipe(cfg.recipe)
    if cfg.epochs is not None:  # as run_strong_evaluation trains them
        recipe = dataclasses.replace(recipe, epochs=cfg.epochs)
    connected = ray_grid.connect(args.ray)
    try:
        ray_grid.prefill_retrained_pools(cfg, data, recipe, quiet=args.quiet)
    finally:
        if connected:
            import ray

            ray.shutdown()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .datasets import CorruptDataError, DataNotFoundError
    from .progress import NonFiniteLossError, RunCancelled
    from .store import StoreError

    try:
        if args.command == "list":
            from .plugins import load_plugins

            load_plugins(args.plugin)  # PluginError: one line naming the file, exit 2
            return cmd_list()
        if args.command == "run":
            return cmd_run(args)
        if args.command == "bench":
            return cmd_bench(args)
        if args.command == "evaluate":
            return cmd_evaluate(args)
        if args.command == "report":
            return cmd_report(args)
        if args.command == "tune":
            return cmd_tune(args)
    except NonFiniteLossError as exc:
        _error_line(exc)
        return 1
    except (ValueError, OSError, StoreError, DataNotFoundError, CorruptDataError) as exc:
        # Bad input (names, specs, parameters, files and folders): one line, exit 2.
        _error_line(exc)
        return EXIT_USAGE
    except (RunCancelled, KeyboardInterrupt):
        sys.stderr.write("mixunlearn: cancelled; nothing was written as complete\n")
        return 130
    except Exception as exc:  # an internal error: still one line (MIXUNLEARN_DEBUG=1 shows the traceback)
        if os.environ.get("MIXUNLEARN_DEBUG"):
            raise
        _error_line(exc, internal=True)
        return 1
    parser.error(f"unknown command {args.command!r}")
    return EXIT_USAGE


def _error_line(exc: BaseException, internal: bool = False) -> None:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if internal:
        text = f"internal error ({type(exc).__name__}): {text} (set MIXUNLEARN_DEBUG=1 for the traceback)"
    sys.stderr.write(f"mixunlearn: error: {text}\n")


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

