"""Bench grids as Ray tasks (``python -m mixunlearn bench ... --ray auto|local|ADDRESS``).

A *cell* is one Ray task. Per (data set, forget spec, seed) one *prepare* cell trains (or reads
from its node's model cache) the original model and Retrain and scores both; then every method
is its own cell, fed the original's weights through Ray's object store as safetensors bytes (no
pickled model, no shared file system). The driver is the only writer: it folds every finished
cell into ``seedN.json`` at once (atomic writes, :func:`mixunlearn.bench.write_seed`) and writes
``table.csv`` / ``table.md`` per setting at the end, exactly as the serial bench does. The resume
rules of :func:`mixunlearn.bench.reusable_records` decide what runs.

This module imports ``ray``; the rest of the library never does (the CLI imports this module only
when ``--ray`` is given).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray

from .bench import merge_records, reusable_records, write_seed, write_tables
from .experiment import ExperimentConfig, json_safe

# A cell whose worker process dies (killed, out of memory, node lost) is run again this often.
MAX_RETRIES = 3
PACKAGE_DIR = Path(__file__).resolve().parent


class RayUnavailable(ValueError):
    """No Ray cluster could be reached (a usage error: one line, exit code 2)."""


# --------------------------------------------------------------------------- connecting


def runtime_env() -> dict[str, Any]:
    """What every worker gets: this package (uploaded, so nodes need no copy of the repository)
    and the passive OpenMP wait policy of the CLI."""
    return {"py_modules": [str(PACKAGE_DIR)], "excludes": ["__pycache__", "*.pyc"],
            "env_vars": {"OMP_WAIT_POLICY": "PASSIVE"}}


def _reachable(address: str, timeout: float = 5.0) -> bool:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise RayUnavailable(f"--ray {address!r} is not an address; use auto, local or HOST:PORT "
                             "(the head's address, e.g. 10.0.0.1:6379)")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except OSError:
        return False


# How long an address may take to answer as a Ray cluster (MIXUNLEARN_RAY_TIMEOUT overrides it).
CONNECT_TIMEOUT = 20.0
# An HTTP/2 client preface and an empty SETTINGS frame: Ray's head (its GCS) is a gRPC server, which
# answers with a SETTINGS frame of its own; a web server or anything else that is not HTTP/2 does not.
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])


def connect_timeout() -> float:
    try:
        value = float(os.environ.get("MIXUNLEARN_RAY_TIMEOUT", CONNECT_TIMEOUT))
    except ValueError:
        return CONNECT_TIMEOUT
    return value if value > 0 else CONNECT_TIMEOUT


def _answers_as_ray(address: str, timeout: float) -> bool:
    """Whether ``HOST:PORT`` answers as a gRPC (HTTP/2) server within ``timeout`` seconds, as Ray's
    head does; a web server, an SSH daemon or a port that accepts and stays silent does not (ray.init
    would wait on them for minutes). With RAY_USE_TLS the check is left to ray.init."""
    if os.environ.get("RAY_USE_TLS", "").strip().lower() in ("1", "true", "yes"):
        return True
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as sock:
            sock.sendall(_H2_PREFACE)
            head = b""
            while len(head) < 9:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                sock.settimeout(left)
                chunk = sock.recv(9 - len(head))
                if not chunk:
                    return False
                head += chunk
    except (OSError, ValueError):  # refused, reset, timed out
        return False
    return head[3] == 0x04  # a frame of type SETTINGS


def _auto_address() -> str | None:
    """The address ``ray.init(address="auto")`` would try (RAY_ADDRESS, else the cluster last
    started on this machine), or None when there is none or Ray's lookup is not available."""
    try:
        from ray._private.services import canonicalize_bootstrap_address

        return canonicalize_bootstrap_address("auto")
    except Exception:  # an internal helper of Ray: without it, ray.init's own error stands
        return None


def connect(address: str, timeout: float | None = None) -> bool:
    """Connect this process to Ray: ``auto`` (a running cluster: RAY_ADDRESS or the one started
    here with ``ray start --head``), ``local`` (start a private one on this machine for this
    command) or ``HOST:PORT`` (a head node). Returns True when this call connected (the caller
    shuts down), False when the process was already connected. Raises :class:`RayUnavailable`
    with one line when no cluster can be reached, or when the address does not answer as a Ray cluster
    within ``timeout`` seconds (default :func:`connect_timeout`)."""
    timeout = connect_timeout() if timeout is None else timeout
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"runtime_env": runtime_env(), "logging_level": logging.WARNING,
                              "include_dashboard": False}
    if address == "local":  # "local": a new instance even when another cluster runs on this machine
        ray.init(address="local", **kwargs)
        return True
    if address == "auto":
        found = _auto_address()
        if found is not None and not _reachable(found):  # e.g. the note of a cluster since stopped
            raise RayUnavailable(f"--ray auto: no running Ray cluster found (the last one, {found}, does not "
                                 "answer; start one with `ray start --head`, or use --ray local)")
        if found is not None and not _answers_as_ray(found, timeout):
            raise RayUnavailable(f"--ray auto: {found} does not answer as a Ray cluster within {timeout:g} s "
                                 "(something else listens there?); start one with `ray start --head`, "
                                 "or use --ray local")
    elif not address.startswith("ray://") and not _reachable(address):
        raise RayUnavailable(f"--ray {address}: no Ray cluster answers there (start one with "
                             "`ray start --head` on that machine, or use --ray local)")
    elif not address.startswith("ray://") and not _answers_as_ray(address, timeout):
        raise RayUnavailable(f"--ray {address}: something listens there but does not answer as a Ray cluster "
                             f"within {timeout:g} s (is it the head's GCS port, 6379 by default?)")
    try:
        ray.init(address=address, **kwargs)
    except (ConnectionError, TimeoutError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hint = ("no running Ray cluster found (start one with `ray start --head`, set RAY_ADDRESS, "
                "or use --ray local)") if address == "auto" else first
        raise RayUnavailable(f"--ray {address}: {hint}") from None
    return True


def check_threads_fit(threads: int) -> None:
    """Refuse (:class:`RayUnavailable`, one line) a per-cell CPU request that no node of the
    connected cluster can grant: Ray would keep every cell pending forever."""
    cpus = [float((n.get("Resources") or {}).get("CPU", 0)) for n in ray.nodes() if n.get("Alive", True)]
    most = max(cpus, default=0.0)
    if threads > most:
        fix = f"use --threads {int(most)} or less" if most >= 1 else "add a node with CPUs"
        raise RayUnavailable(f"--threads {threads} asks {threads} CPUs for each cell, but the largest node of the Ray "
                             f"cluster has {most:g}: no cell could ever start; {fix}")


def gpus_per_cell(device: str) -> float:
    """A GPU per cell when the config asks for CUDA, or for ``auto`` on a cluster that has GPUs."""
    device = (device or "auto").strip().lower()
    if device.startswith("cuda"):
        return 1.0
    if device == "auto":
        return 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    return 0.0


# --------------------------------------------------------------------------- the cells (on workers)


def _pin_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _where() -> dict[str, str]:
    node = ray.get_runtime_context().get_node_id() or ""
    return {"host": socket.gethostname(), "node": node[:8], "pid": str(os.getpid())}


# A worker keeps the last data set it loaded and its last two splits: cells of one seed (and the
# settings of one data set) that land on the same worker do not load the files again.
_DATASET: dict[tuple, Any] = {}
_SPLITS: dict[tuple, Any] = {}


def _data(cfg: ExperimentConfig, device):
    from .data import make_split
    from .datasets import load_dataset

    key = (cfg.dataset, cfg.data_root, cfg.forget, cfg.seed, cfg.eval_split, str(device))
    if key in _SPLITS:
        _SPLITS[key] = _SPLITS.pop(key)  # most recently used last
        return _SPLITS[key]
    source = (cfg.dataset, cfg.data_root)
    if source not in _DATASET:
        _DATASET.clear()
        _DATASET[source] = load_dataset(cfg.dataset, cfg.data_root, download=cfg.download)
    _SPLITS[key] = make_split(_DATASET[source], cfg.forget, cfg.seed, eval_split=cfg.eval_split).to(device)
    while len(_SPLITS) > 2:
        _SPLITS.pop(next(iter(_SPLITS)))
    return _SPLITS[key]


def _model_bytes(model) -> bytes:
    from safetensors.torch import save

    return save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()})


@ray.remote(num_returns=2, max_retries=MAX_RETRIES)
def prepare_cell(cfg_dict: dict, threads: int) -> tuple[dict, bytes]:
    """The original model and Retrain of one seed (from this node's cache or trained), scored.
    Returns the head of the seed document and the original's weights as safetensors bytes."""
    from .experiment import experiment_info, prepare_oracles
    from .utils import resolve_device, seed_everything

    _pin_threads(threads)
    cfg = ExperimentConfig.from_dict(cfg_dict).resolved()
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    started = time.time()
    data = _data(cfg, device)
    oracles = prepare_oracles(cfg, data)
    head = {"original": oracles.original_record.to_json(), "retrain": oracles.retrain_record.to_json(),
            "retrain_metrics": dict(oracles.retrain_record.metrics),  # unrounded: the gaps need them
            "info": experiment_info(data, device, oracles, started), "where": _where()}
    return head, _model_bytes(oracles.original.model)


@ray.remote(max_retries=MAX_RETRIES)
def method_cell(cfg_dict: dict, name: str, head: dict, original: bytes, threads: int) -> dict:
    """One method of one seed on the original's weights, scored against Retrain's metrics: the same
    code as the serial bench (:func:`mixunlearn.experiment.run_one_method`)."""
    from safetensors.torch import load

    from .experiment import run_one_method
    from .models import build_model
    from .training import load_state_checked
    from .utils import resolve_device, seed_everything

    _pin_threads(threads)
    cfg = ExperimentConfig.from_dict(cfg_dict).resolved()
    device = resolve_device(cfg.device)
    data = _data(cfg, device)
    model = build_model(cfg.model, data.info, seed=cfg.seed)
    load_state_checked(model, load(original))
    model = model.to(device).eval()
    seed_everything(cfg.seed)
    record, _ = run_one_method(name, cfg, model, data, head["retrain_metrics"], device)
    return {"record": record.to_json(), "where": _where()}


# --------------------------------------------------------------------------- the driver


@dataclass
class SeedPlan:
    """One seed of one setting: what is stored, what runs, what came back."""

    setting: int
    cfg: ExperimentConfig
    path: Path
    stored: dict | None  # the reusable stored document, if any
    to_run: list[str]  # methods (besides Retrain) that run
    head: dict | None = None
    records: dict[str, dict] = field(default_factory=dict)
    where: dict[str, dict] = field(default_factory=dict)
    submitted: float = 0.0
    written: dict | None = None  # the document last written to ``path``

    @property
    def label(self) -> str:
        return f"{self.cfg.dataset} {self.cfg.forget} seed {self.cfg.seed}"

    def document(self) -> dict:
        """The seed document as far as it is known (only called once the head is in)."""
        assert self.head is not None
        info = {**self.head["info"], "seconds_total": time.time() - self.submitted,
                "ray": {"cells": self.where, "retries": MAX_RETRIES}}
        part = json_safe({"config": self.cfg.to_dict(), "original": self.head["original"],
                          "methods": {"retrain": self.head["retrain"], **self.records}, "info": info})
        return merge_records(self.cfg, self.stored, part)


@dataclass
class Cell:
    plan: SeedPlan
    name: str  # "original+retrain" for the prepare cell, else the method


def _fmt_secs(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def _drain(pending: dict, handle: Callable[[Any, Any], str], write: Callable[[str], None], *, desc: str,
           unit: str, quiet: bool) -> None:
    """Hand each of ``pending``'s Ray tasks (ref -> tag) to ``handle(ref, tag)`` as it finishes and
    write the line it returns as "[n/total] LINE · eta H:MM:SS", with a progress bar. If ``handle``
    raises, or on Ctrl-C, the tasks still queued or running are cancelled: what ``handle`` already
    stored stays, so a rerun resumes from there."""
    from tqdm import tqdm

    total, done, start = len(pending), 0, time.time()
    bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True,
               disable=quiet or not sys.stderr.isatty())
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
            for ref in ready:
                tag = pending.pop(ref)
                line = handle(ref, tag)
                done += 1
                bar.update(1)
                write(f"[{done}/{total}] {line} · eta {_fmt_secs((time.time() - start) / done * (total - done))}")
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    finally:
        bar.close()


def run_grid_ray(settings: Sequence[tuple[Sequence[ExperimentConfig], Path]], *, threads: int = 1,
                 reuse: bool = True, quiet: bool = False, on_cell: Callable[[Cell, dict], None] | None = None,
                 write: Callable[[str], None] | None = None) -> list[str]:
    """Run a grid on the connected Ray cluster: ``settings`` pairs one setting's configs (one per
    seed) with its output folder. Returns each setting's markdown table.

    ``threads`` is the intra-op thread count of every cell and its CPU request. ``on_cell`` is
    called on the driver after each finished cell has been written (a test hook; an exception
    from it, like Ctrl-C, cancels the outstanding cells). ``write`` prints a progress line."""
    from tqdm import tqdm

    write = write or (lambda text: tqdm.write(text, file=sys.stderr))
    plans: list[SeedPlan] = []
    for i, (cfgs, out) in enumerate(settings):
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        for cfg in cfgs:
            cfg = cfg.resolved()
            path = out / f"seed{cfg.seed}.json"
            why: list[str] = []
            if reuse:  # a seed file is reused only for the same data (its fingerprint) and valid records
                from .datahash import data_hash

                stored, to_run = reusable_records(path, cfg, data_hash(_data(cfg, "cpu")), why)
            else:
                stored, to_run = None, []
            for line in why:
                write(line)
            if stored is None:
                to_run = [m for m in cfg.methods if m != "retrain"]
            plans.append(SeedPlan(i, cfg, path, stored, to_run))

    pending: dict[Any, Cell] = {}
    for plan in plans:
        if plan.stored is not None and not plan.to_run:
            write(f"reusing {plan.path} (same config, every method done)")
            continue
        if plan.stored is not None:
            write(f"reusing {len(plan.cfg.methods) - 1 - len(plan.to_run)} method(s) from {plan.path}; "
                  f"running {', '.join(plan.to_run)}")
        opts = {"num_cpus": threads, "num_gpus": gpus_per_cell(plan.cfg.device)}
        sub = dataclasses.replace(plan.cfg, methods=("retrain", *plan.to_run),
                                  params={k: v for k, v in plan.cfg.params.items() if k in plan.to_run})
        cfg_dict = sub.to_dict()
        plan.submitted = time.time()
        head_ref, weights_ref = prepare_cell.options(**opts).remote(cfg_dict, threads)
        pending[head_ref] = Cell(plan, "original+retrain")
        for name in plan.to_run:
            ref = method_cell.options(**opts).remote(cfg_dict, name, head_ref, weights_ref, threads)
            pending[ref] = Cell(plan, name)

    def handle(ref, cell: Cell) -> str:
        result = _get(ref, cell)
        plan = cell.plan
        if cell.name == "original+retrain":
            theirs, ours = result["info"].get("data_hash"), (plan.stored or {}).get("info", {}).get("data_hash")
            if plan.stored is not None and theirs != ours:  # kept records and new ones must be of one data set
                raise RuntimeError(f"{plan.label}: node {result['where']['host']} read other data files than "
                                   f"this machine ({theirs} vs {ours}); give every node the same files")
            plan.head = result
            plan.where["original+retrain"] = result["where"]
            detail = _prep_detail(result)
        else:
            plan.records[cell.name] = result["record"]
            plan.where[cell.name] = result["where"]
            detail = _method_detail(result["record"])
        plan.written = plan.document()
        write_seed(plan.path, plan.written)
        if on_cell is not None:
            on_cell(cell, result)
        return f"{plan.label} · {cell.name}: {detail} on {result['where']['host']}/{result['where']['node']}"

    # Ctrl-C or a failed cell cancels the rest; every finished cell is already in its seed file.
    _drain(pending, handle, write, desc="cells", unit="cell", quiet=quiet)

    tables = []
    for i, (_, out) in enumerate(settings):
        results = []
        for plan in (p for p in plans if p.setting == i):
            results.append(plan.written if plan.written is not None else _restricted_stored(plan))
        tables.append(write_tables(results, out))
    return tables


def _restricted_stored(plan: SeedPlan) -> dict:
    from .bench import _restricted

    return _restricted(plan.stored, plan.cfg)


def _get(ref, cell: Cell) -> dict:
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        cause = exc.cause if isinstance(exc.cause, BaseException) else None
        if cause is not None:  # the cell's own error (e.g. NaN while training the original)
            raise cause from None
        raise RuntimeError(f"{cell.plan.label} · {cell.name} failed: {str(exc).splitlines()[0]}") from None
    except ray.exceptions.RayError as exc:  # a worker lost more often than the retries allow
        raise RuntimeError(f"{cell.plan.label} · {cell.name} failed on Ray: "
                           f"{' '.join(str(exc).split())[:300]}") from None


def _prep_detail(head: dict) -> str:
    def one(rec: dict) -> str:
        return "cached" if rec.get("cached") else f"trained {rec.get('seconds') or 0:.1f} s"

    return f"original {one(head['original'])}, Retrain {one(head['retrain'])}"


def _method_detail(rec: dict) -> str:
    if rec.get("status") != "done":
        return f"FAILED ({' '.join(str(rec.get('error', '')).split())[:120]})"
    gap = rec.get("gap_to_retrain")
    return (f"done in {rec.get('seconds') or 0:.1f} s" + (f", gap {gap:.2f}" if gap is not None else ""))


# --------------------------------------------------------------------------- strong evaluation pools


@ray.remote(max_retries=MAX_RETRIES)
def pool_member_cell(task: dict, recipe, seed: int, threads: int) -> dict:
    """One retrained pool member of the strong evaluation (``pools.retrained_model``: from this
    node's cache or trained one at a time), returned as safetensors bytes."""
    from .pools import retrained_model
    from .training import ModelCache
    from .utils import resolve_device

    _pin_threads(threads)
    device = resolve_device(task["device"])
    data = _data(ExperimentConfig(dataset=task["dataset"], forget=task["forget"], seed=task["seed"],
                                  data_root=task["data_root"], eval_split=task["eval_split"],
                                  download=task["download"]), device)
    model, seconds, cached, _ = retrained_model(data, task["model"], recipe, seed, ModelCache())
    from .datahash import data_hash

    return {"weights": _model_bytes(model), "seconds": seconds, "cached": cached, "where": _where(),
            "data_hash": data_hash(data)}


def prefill_retrained_pools(cfg, data, recipe, *, threads: int = 1, quiet: bool = False,
                            write: Callable[[str], None] | None = None) -> int:
    """Train the retrained pools of a strong evaluation (``cfg``: a resolved StrongEvalConfig;
    ``data`` its split; ``recipe`` its recipe, epochs applied) as Ray tasks, one member per task,
    and put each into this machine's model cache under the key ``pools.retrained_pool`` looks up;
    ``run_strong_evaluation`` then reads them from the cache. Members already cached here are
    skipped. Members trained this way are those of ``--pool-batch 1`` (one model at a time).
    Returns how many members were trained or fetched."""
    from safetensors.torch import load
    from tqdm import tqdm

    from .datahash import data_hash
    from .models import build_model
    from .pools import _save_member, pool_cache_parts, pool_seeds
    from .training import ModelCache, load_state_checked

    write = write or (lambda text: tqdm.write(text, file=sys.stderr))
    cache = ModelCache()
    task = {"dataset": cfg.dataset, "forget": cfg.forget, "seed": cfg.seed, "data_root": cfg.data_root,
            "eval_split": cfg.eval_split, "download": cfg.download, "device": cfg.device, "model": cfg.model}
    opts = {"num_cpus": threads, "num_gpus": gpus_per_cell(cfg.device)}
    streams = ["reference"] + (["unlearner"] if "retrain" in cfg.methods else [])
    pending: dict[Any, tuple[str, int, int, str]] = {}
    for stream in streams:
        for i, seed in enumerate(pool_seeds(cfg.seed, cfg.pool, stream)):
            key = cache.key(pool_cache_parts(data, cfg.model, recipe, seed))
            if all(p.is_file() for p in cache.paths(key)):
                continue
            pending[pool_member_cell.options(**opts).remote(task, recipe, seed, threads)] = (stream, i, seed, key)
    total = len(pending)

    def handle(ref, tag: tuple[str, int, int, str]) -> str:
        stream, i, seed, key = tag
        try:
            result = ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, BaseException):
                raise exc.cause from None
            raise RuntimeError(f"pool member {stream} {i + 1}: {str(exc).splitlines()[0]}") from None
        if result.get("data_hash") != data_hash(data):  # cached here under this machine's data's key
            raise RuntimeError(f"pool member {stream} {i + 1}: node {result['where']['host']} read other data "
                               "files than this machine; give every node the same files")
        model = build_model(cfg.model, data.info, seed=seed)
        load_state_checked(model, load(result["weights"]))
        _save_member(data, cfg.model, recipe, seed, cache, key, model, result["seconds"])
        how = "cached there" if result["cached"] else f"trained {result['seconds']:.1f} s"
        return (f"retrained pool ({stream}) member {i + 1}/{cfg.pool}: {how} on "
                f"{result['where']['host']}/{result['where']['node']}")

    _drain(pending, handle, write, desc="pool members", unit="model", quiet=quiet)
    return total
