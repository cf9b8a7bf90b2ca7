"""``tune --ray``: the trials of one study as Ray tasks on the cluster ``bench --ray`` uses.

The driver owns the study (ask and tell on its storage): it prepares every tuning seed's original
model and Retrain once (trained or from its model cache), puts the original's weights into Ray's
object store as safetensors bytes (no pickled model), and keeps one trial per free slot running;
each finished trial is told to the study at once, so an interrupted study resumes from the
storage like a serial one. A trial's time ratio is measured on its worker (the method's seconds
over a timed slice of Retrain's training in that worker process, mixunlearn.tune.retrain_seconds_here).

Imports ``ray``; the CLI imports this module only when ``--ray`` is given.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray

from .ray_grid import MAX_RETRIES, _data, _model_bytes, _pin_threads, _where, gpus_per_cell
from .tune import (
    TuneResult,
    TuneTask,
    counted,
    default_storage,
    evaluate_params,
    open_study,
    prepare_seed,
    retrain_seconds_here,
    suggest,
    tell,
    write_best,
)

# A worker keeps the originals it has loaded (per seed), so later trials on it skip the bytes.
_ORIGINALS: dict[tuple, Any] = {}


@ray.remote(max_retries=MAX_RETRIES)
def trial_cell(task_dict: dict, params: dict, heads: list[dict], originals: list[bytes], threads: int,
               stop_over_cap: bool = True) -> dict:
    """One trial on a worker: the method with ``params`` on every tuning seed (validation split),
    scored against each seed's Retrain metrics (``heads``)."""
    from safetensors.torch import load

    from .models import build_model
    from .training import load_state_checked
    from .tune import SeedSetup
    from .utils import resolve_device

    _pin_threads(threads)
    task = TuneTask.from_dict(task_dict)
    device = resolve_device(task.device)
    setups = []
    for head, weights in zip(heads, originals):
        cfg = task.experiment(head["seed"])
        data = _data(cfg, device)
        key = (cfg.dataset, cfg.forget, cfg.seed, cfg.model, cfg.recipe, head["key"], str(device))
        if key not in _ORIGINALS:
            model = build_model(cfg.model, data.info, seed=cfg.seed)
            load_state_checked(model, load(weights))
            if len(_ORIGINALS) > 8:
                _ORIGINALS.clear()
            _ORIGINALS[key] = model.to(device).eval()
        setups.append(SeedSetup(head["seed"], data, _ORIGINALS[key], head["retrain_metrics"],
                                retrain_seconds_here(task, data, head["seed"]), timed=True))
    result = evaluate_params(task, setups, params, stop_over_cap=stop_over_cap)
    result["where"] = _where()
    return result


def run_tuning_ray(task: TuneTask, trials: int, out: str | Path, *, storage: str | None = None,
                   threads: int = 1, write: Callable[[str], None] | None = None, callbacks=None,
                   parallel: int | None = None) -> TuneResult:
    """Run (or continue) the study of ``task`` on the connected Ray cluster until it holds ``trials``
    counted trials; ``parallel`` trials at once (default: the cluster's CPUs / ``threads``)."""
    write = write or (lambda text: print(text, file=sys.stderr, flush=True))
    task = task.resolved()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    study = open_study(task, storage or default_storage(out))
    todo = max(0, trials - len(counted(study)))
    lines: list[str] = []
    if todo:
        setups = [prepare_seed(task, s, callbacks) for s in task.seeds]
        heads = [{"seed": s.seed, "retrain_metrics": dict(s.retrain_metrics), "key": i}
                 for i, s in enumerate(setups)]
        # One object (a list of safetensors bytes): Ray resolves a reference given as an argument
        # itself, not one nested in a list.
        originals = ray.put([_model_bytes(s.original) for s in setups])
        del setups
        dims = task.space()
        slots = parallel or max(1, int(ray.cluster_resources().get("CPU", 1) // threads))
        opts = {"num_cpus": threads, "num_gpus": gpus_per_cell(task.device)}
        pending: dict[Any, Any] = {}
        asked = 0
        try:
            while asked < todo or pending:
                while asked < todo and len(pending) < slots:
                    trial = study.ask()
                    params = suggest(trial, dims)
                    ref = trial_cell.options(**opts).remote(task.to_dict(), params, heads, originals, threads,
                                                                 not trial.user_attrs.get("shipped"))
                    pending[ref] = trial
                    asked += 1
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    trial = pending.pop(ref)
                    try:
                        result = ray.get(ref)
                    except ray.exceptions.RayError as exc:  # the worker died more often than retried
                        result = {"error": f"Ray: {' '.join(str(exc).split())[:300]}"}
                    line = tell(study, trial, result)
                    lines.append(line)
                    write(line)
                    write_best(study, out)
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
    path = write_best(study, out)
    return TuneResult(json.loads(path.read_text()), path, len(lines), lines)
