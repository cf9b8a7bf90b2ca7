"""Background jobs: one thread per run, a progress buffer the app polls, cancel, and a GPU queue.

The app never trains inside a page script. It submits a job to the process-wide
:class:`JobRunner` (see :func:`get_runner`), remembers the job id in its session, and polls
:meth:`Job.view` from a fragment. A job moves through a small state machine::

    queued ──> running ──> done
      │           │  └───> failed
      │           └──> cancelling ──> cancelled
      │                      └──────> failed
      ├──> cancelled            (cancelled before it started)
      └──> failed               (could not start)

Illegal transitions raise :class:`IllegalTransition`. ``cancel()`` on a running job sets a flag;
the next progress callback raises :class:`~mixunlearn.progress.RunCancelled`, which unwinds
the method. A job may enter a "point of no return" (e.g. while committing a run to the store);
a cancel request that arrives inside or after it is refused, so a cancelled job never leaves a
complete run behind, and a complete run is never half-cancelled.

GPU jobs (``gpu=True``, by default any job whose device resolves to CUDA or MPS) wait in a FIFO
queue shared by the whole process, so two browser sessions never train on one GPU at once; a
waiting job stays ``queued`` with the message "waiting for the GPU". CPU jobs run at once and
may run concurrently.

A failure keeps a short, plain message for the user (:func:`describe_error`) and the full
traceback in :attr:`Job.debug`, never shown unless asked for.

Every job has an unguessable :attr:`Job.token`: a browser tab keeps it (the app puts it in the
page's URL) and finds its job again after a reload (:meth:`JobRunner.find_token`).
:meth:`JobRunner.submit_once` starts a job only when no active job of the same key runs (the app
keys experiment jobs by their resolved config, :func:`experiment_key`), so two clicks, tabs or
sessions asking for the same run share one job.
"""

from __future__ import annotations

import collections
import itertools
import json
import secrets
import threading
import time
import traceback
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from .progress import NonFiniteLossError, ProgressEvent, RunCancelled

QUEUED, RUNNING, CANCELLING, CANCELLED, DONE, FAILED = "queued", "running", "cancelling", "cancelled", "done", "failed"
STATES = (QUEUED, RUNNING, CANCELLING, CANCELLED, DONE, FAILED)
FINAL_STATES = (CANCELLED, DONE, FAILED)
TRANSITIONS: dict[str, tuple[str, ...]] = {
    QUEUED: (RUNNING, CANCELLED, FAILED),
    RUNNING: (CANCELLING, DONE, FAILED),
    CANCELLING: (CANCELLED, FAILED),
    CANCELLED: (),
    DONE: (),
    FAILED: (),
}


class IllegalTransition(RuntimeError):
    """A job was asked to move to a state its current state cannot reach."""


# --------------------------------------------------------------------------- user-facing errors


def describe_error(exc: BaseException) -> str:
    """A short message for the user, saying what went wrong and what to do next (no traceback)."""
    from .datasets import CorruptDataError, DataNotFoundError
    from .store import StoreError
    from .utils import HomeError

    if isinstance(exc, RunCancelled):
        return "The run was cancelled; nothing was saved. Start it again when you are ready."
    if isinstance(exc, NonFiniteLossError):
        return str(exc)
    if isinstance(exc, DataNotFoundError):
        return f"{exc}\nPick another dataset (digits always works offline) or provide the files, then run again."
    if isinstance(exc, CorruptDataError):
        return f"A data file is damaged: {exc}. Delete or replace it, then run again."
    if isinstance(exc, HomeError):  # names MIXUNLEARN_HOME and what to do already
        return f"{exc}, then restart the app."
    if isinstance(exc, StoreError):
        return (f"The run store cannot be used: {exc}. Move the store folder aside (a fresh one is created) "
                f"or set MIXUNLEARN_HOME to another folder, then restart the app.")
    if isinstance(exc, MemoryError) or "out of memory" in str(exc).lower():
        return ("The device ran out of memory. Use a smaller batch size, a smaller model or the CPU, "
                "then run again.")
    if isinstance(exc, (ValueError, TypeError, KeyError, PermissionError)):
        # str() of a KeyError is the repr of the key: drop those quotes, keep every other message's.
        text = (str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)) or type(exc).__name__
        return f"Invalid setting: {text}. Change it and run again."
    return (f"Unexpected error ({type(exc).__name__}: {exc}). Nothing was saved. Try again; if it keeps "
            f"happening, the technical details are in the job's debug log.")


# --------------------------------------------------------------------------- progress buffer


def _scalar(v: Any) -> float | int | str | bool | None:
    if isinstance(v, (bool, int, float, str)) or v is None:
        return v
    try:
        import torch

        if isinstance(v, torch.Tensor) and v.numel() == 1:
            return float(v)
    except Exception:  # pragma: no cover - torch always importable here
        pass
    return None


def _as_seconds(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if v == v and 0 < v < float("inf") else None


def eta_seconds(summary: dict[str, Any]) -> float | None:
    """Seconds left in a source's phase at its rate since the phase began: None before two reports
    of the phase (no rate yet) or without a known total; 0 once the phase's last step is reported."""
    total, step, step0 = summary.get("total") or 0, summary.get("step", 0), summary.get("phase_step0", 0)
    if not total:
        return None
    if step >= total:
        return 0.0
    spent = summary["time"] - summary["phase_start"]
    if step <= step0 or spent <= 0:
        return None
    return spent * (total - step) / (step - step0)


class ProgressBuffer:
    """Thread-safe record of a job's progress events, bounded in memory.

    Keeps, per source (a method name, "original", "retrain", ...): the latest event (as a plain
    dict), a history of logged losses and probe accuracies (for live curves; at most
    ``max_history`` points, thinned by half when full), generator snapshots (at most
    ``max_snapshots``, the newest kept), and the last ``max_messages`` text messages.
    The training model attached to an event is never kept.
    """

    def __init__(self, max_history: int = 2000, max_snapshots: int = 50, max_messages: int = 200):
        self._lock = threading.Lock()
        self.max_history, self.max_snapshots = max_history, max_snapshots
        self._latest: dict[str, dict[str, Any]] = {}
        self._order: list[str] = []
        self._history: dict[str, list[dict[str, float]]] = {}
        self._snapshots: dict[str, collections.deque] = {}
        self._messages: collections.deque = collections.deque(maxlen=max_messages)
        self.version = 0

    def record(self, event: ProgressEvent) -> None:
        summary = {
            "source": event.source, "phase": event.phase, "step": int(event.step), "total": int(event.total),
            "fraction": float(event.fraction), "losses": {k: float(v) for k, v in event.losses.items()},
            "message": event.message, "time": time.time(),
        }
        probe = event.data.get("probe") if isinstance(event.data, dict) else None
        extras = {k: s for k, v in (event.data or {}).items()
                  if k not in ("probe", "snapshot") and (s := _scalar(v)) is not None}
        summary["data"] = extras
        with self._lock:
            self.version += 1
            if event.source not in self._latest:
                self._order.append(event.source)
            # ETA of the source's current phase: the rate since the phase's first report.
            prev = self._latest.get(event.source)
            if prev is None or prev["phase"] != summary["phase"] or prev["total"] != summary["total"] \
                    or summary["step"] < prev["step"]:
                summary["phase_start"], summary["phase_step0"] = summary["time"], summary["step"]
            else:
                summary["phase_start"], summary["phase_step0"] = prev["phase_start"], prev["phase_step0"]
            summary["eta"] = eta_seconds(summary)
            self._latest[event.source] = summary
            if event.losses or probe:
                point = {"step": int(event.step), **summary["losses"]}
                if probe:
                    point.update({f"probe_{k}": float(v) for k, v in probe.items()})
                hist = self._history.setdefault(event.source, [])
                hist.append(point)
                if len(hist) > self.max_history:
                    # Thin the older half so long runs keep their shape in bounded memory.
                    half = len(hist) // 2
                    self._history[event.source] = hist[:half:2] + hist[half:]
            snap = event.data.get("snapshot") if isinstance(event.data, dict) else None
            if snap is not None:
                self._snapshots.setdefault(event.source, collections.deque(maxlen=self.max_snapshots)).append(snap)
            if event.message:
                self._messages.append((time.time(), event.source, event.message))

    def message(self, source: str, text: str) -> None:
        with self._lock:
            self.version += 1
            self._messages.append((time.time(), source, text))

    def latest(self) -> dict[str, dict[str, Any]]:
        """The latest event of every source, in the order the sources first reported."""
        with self._lock:
            return {s: dict(self._latest[s]) for s in self._order}

    def history(self, source: str | None = None) -> dict[str, list[dict[str, float]]]:
        with self._lock:
            if source is not None:
                return {source: list(self._history.get(source, []))}
            return {s: list(h) for s, h in self._history.items()}

    def snapshots(self, source: str) -> list[Any]:
        with self._lock:
            return list(self._snapshots.get(source, ()))

    def snapshot_sources(self) -> list[str]:
        with self._lock:
            return list(self._snapshots)

    def messages(self, n: int | None = None) -> list[tuple[float, str, str]]:
        with self._lock:
            msgs = list(self._messages)
        return msgs[-n:] if n else msgs


# --------------------------------------------------------------------------- GPU queue


class GpuQueue:
    """A FIFO gate: one holder at a time, waiters served in arrival order."""

    def __init__(self):
        self._cond = threading.Condition()
        self._waiting: collections.deque[str] = collections.deque()
        self.holder: str | None = None

    def position(self, job_id: str) -> int | None:
        """How many jobs are ahead of ``job_id`` (0: next), None when it is not waiting."""
        with self._cond:
            try:
                return self._waiting.index(job_id) + (1 if self.holder is not None else 0)
            except ValueError:
                return None

    def acquire(self, job_id: str, abort: Callable[[], bool] = lambda: False, poll: float = 0.1) -> bool:
        """Wait for the GPU; False when ``abort()`` became true while waiting."""
        with self._cond:
            self._waiting.append(job_id)
            try:
                while self.holder is not None or self._waiting[0] != job_id:
                    if abort():
                        return False
                    self._cond.wait(poll)
                if abort():
                    return False
                self.holder = job_id
                return True
            finally:
                self._waiting.remove(job_id)
                self._cond.notify_all()

    def release(self, job_id: str) -> None:
        with self._cond:
            if self.holder == job_id:
                self.holder = None
            self._cond.notify_all()


_PROCESS_GPU_QUEUE = GpuQueue()


# --------------------------------------------------------------------------- jobs


@dataclass
class JobView:
    """A consistent, copy-only view of a job for the UI."""

    id: str
    label: str
    kind: str
    state: str
    gpu: bool
    created: float
    started: float | None
    finished: float | None
    message: str
    error: str
    run_id: str | None
    latest: dict[str, dict[str, Any]] = field(default_factory=dict)
    history: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    messages: list[tuple[float, str, str]] = field(default_factory=list)
    version: int = 0
    cancellable: bool = True  # False once the job is final or past its point of no return
    estimate_s: float | None = None  # the duration estimated before the start (mixunlearn.estimate), if any

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def active(self) -> bool:
        return not self.final

    @property
    def elapsed(self) -> float:
        start = self.started or self.created
        return (self.finished or time.time()) - start


class Job:
    """One background run. Create through :meth:`JobRunner.submit`."""

    def __init__(self, job_id: str, label: str, kind: str, gpu: bool, meta: dict | None = None,
                 key: str | None = None):
        self.id, self.label, self.kind, self.gpu = job_id, label, kind, gpu
        self.meta = dict(meta or {})
        self.key = key  # jobs of one key never run twice at once (JobRunner.submit_once)
        self.token = secrets.token_urlsafe(12)  # for a browser tab to find the job again
        self.progress = ProgressBuffer()
        self._lock = threading.RLock()
        self._state = QUEUED
        self._cancel = threading.Event()
        self._no_return = False
        self.stop_reason = ""  # set when the job is stopped by something other than a Cancel (a shutdown)
        self.created, self.started, self.finished = time.time(), None, None
        self.message = "queued"
        self.error = ""  # for the user
        self.debug = ""  # traceback, for developers only
        self.result: Any = None
        self.run_id: str | None = None
        self.run_store = None  # the RunStore holding run_id (the app marks it interrupted at exit)
        self.thread: threading.Thread | None = None
        self.history_of_states: list[str] = [QUEUED]
        self._done = threading.Event()

    # -- state machine

    @property
    def state(self) -> str:
        return self._state

    def _transition(self, new: str) -> None:
        with self._lock:
            if new not in TRANSITIONS[self._state]:
                raise IllegalTransition(f"job {self.id}: cannot go from {self._state} to {new}")
            self._state = new
            self.history_of_states.append(new)
            if new in FINAL_STATES:
                self.finished = time.time()
                self._done.set()

    # -- cancellation

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    def cancel(self) -> bool:
        """Ask the job to stop. True when the request was accepted (queued jobs are cancelled at
        once, running ones at their next progress report); False when the job already finished
        or is past its point of no return."""
        with self._lock:
            if self._state == QUEUED:
                self._cancel.set()
                if self.thread is None:  # never started: nothing will pick the flag up
                    self._transition(CANCELLED)
                    self.message = "cancelled before it started"
                return True
            if self._state == RUNNING and not self._no_return:
                self._cancel.set()
                self._transition(CANCELLING)
                self.message = "cancelling at the next progress report..."
                return True
            return self._state == CANCELLING

    def raise_if_cancelled(self) -> None:
        if self._cancel.is_set():
            with self._lock:
                if not self._no_return:
                    raise RunCancelled(f"job {self.id} cancelled")

    @contextmanager
    def point_of_no_return(self):
        """Inside (and after) this block cancel requests are refused; entering it raises
        RunCancelled when a cancel is already pending."""
        with self._lock:
            if self._cancel.is_set():
                raise RunCancelled(f"job {self.id} cancelled")
            self._no_return = True
        yield

    # -- progress

    def callback(self, event: ProgressEvent) -> None:
        """The progress callback handed to methods and trainers."""
        self.progress.record(event)
        if event.message:
            self.message = f"{event.source}: {event.message}"
        elif event.total:
            self.message = f"{event.source}: {event.phase} {event.step}/{event.total}"
        self.raise_if_cancelled()

    def say(self, text: str, source: str = "job") -> None:
        self.message = text
        self.progress.message(source, text)

    # -- views

    def view(self, with_history: bool = True) -> JobView:
        with self._lock:
            state, started, finished = self._state, self.started, self.finished
            cancellable = state in (QUEUED, RUNNING) and not self._no_return
        return JobView(self.id, self.label, self.kind, state, self.gpu, self.created, started, finished,
                       self.message, self.error, self.run_id, self.progress.latest(),
                       self.progress.history() if with_history else {}, self.progress.messages(20),
                       self.progress.version, cancellable, _as_seconds(self.meta.get("estimate_s")))

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job is final; True when it is."""
        return self._done.wait(timeout)


JobFn = Callable[[Job], Any]


class JobRunner:
    """Owns background jobs. One per process (:func:`get_runner`); safe to call from any thread."""

    def __init__(self, gpu_queue: GpuQueue | None = None, keep: int = 100):
        self.gpu_queue = gpu_queue or _PROCESS_GPU_QUEUE
        self.keep = keep
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._once_lock = threading.Lock()
        self._ids = itertools.count(1)

    def submit(self, fn: JobFn, *, label: str = "", kind: str = "job", gpu: bool | None = None,
               device: str | None = None, meta: dict | None = None, start: bool = True,
               key: str | None = None) -> Job:
        """Start ``fn(job)`` in a new daemon thread and return the job at once.

        ``gpu``: whether the job waits in the process-wide GPU queue; by default true when
        ``device`` resolves to an accelerator. ``key``: see :meth:`submit_once`.
        """
        if gpu is None:
            gpu = _is_accelerator(device)
        with self._lock:
            job_id = f"job-{next(self._ids)}-{int(time.time() * 1000) % 100000:05d}"
            job = Job(job_id, label or kind, kind, bool(gpu), meta, key)
            self._jobs[job_id] = job
            self._prune()
        if start:
            self.start(job, fn)
        return job

    def submit_once(self, key: str, fn: JobFn, **kwargs: Any) -> tuple[Job, bool]:
        """Submit ``fn`` under ``key`` unless an active job of that key exists: ``(job, True)`` for a
        new job, ``(the running one, False)`` otherwise. The look-up and the submit are one step,
        so two callers at the same moment start one job."""
        with self._once_lock:
            running = self.active(key)
            if running is not None:
                return running, False
            return self.submit(fn, key=key, **kwargs), True

    def active(self, key: str) -> Job | None:
        """The oldest job of ``key`` that is not final, or None."""
        for job in self.jobs():
            if job.key == key and job.state not in FINAL_STATES:
                return job
        return None

    def find_token(self, token: str | None) -> Job | None:
        """The job whose :attr:`Job.token` is ``token`` (None for an unknown or empty token)."""
        if not token:
            return None
        wanted = str(token).encode("utf-8", "replace")
        for job in self.jobs():
            if secrets.compare_digest(job.token.encode(), wanted):
                return job
        return None

    def start(self, job: Job, fn: JobFn) -> None:
        with job._lock:
            if job.state != QUEUED or job.thread is not None:
                raise IllegalTransition(f"job {job.id} is {job.state}; it cannot be started")
            job.thread = threading.Thread(target=self._run, args=(job, fn), name=f"mixunlearn-{job.id}", daemon=True)
        job.thread.start()

    def _run(self, job: Job, fn: JobFn) -> None:
        holding_gpu = False
        try:
            if job.gpu:
                if self.gpu_queue.holder is not None or self.gpu_queue.position(job.id) is not None:
                    job.say("waiting for the GPU (another run is using it)")
                else:
                    job.say("waiting for the GPU")
                holding_gpu = self.gpu_queue.acquire(job.id, abort=lambda: job.cancel_requested)
                if not holding_gpu:
                    job._transition(CANCELLED)
                    job.message = "cancelled while waiting for the GPU"
                    return
            with job._lock:
                if job.cancel_requested:
                    job._transition(CANCELLED)
                    job.message = "cancelled before it started"
                    return
                job._transition(RUNNING)
                job.started = time.time()
            job.say("running")
            result = fn(job)
            with job._lock:
                job.result = result
                if job.state == CANCELLING:
                    if job._no_return:  # pragma: no cover - cancel() refuses past the point of no return
                        raise IllegalTransition("cancel accepted after the point of no return")
                    job._transition(CANCELLED)
                    job.message = "cancelled"
                else:
                    job._transition(DONE)
                    job.message = "done"
        except RunCancelled as exc:
            with job._lock:
                if job.state == RUNNING:  # the job itself chose to stop
                    job._transition(CANCELLING)
                job.error = describe_error(exc)
                if job.stop_reason:  # not the user's Cancel: say what stopped it
                    job.error = (f"The run was stopped because {job.stop_reason}; nothing was saved. "
                                 "Start it again when the app runs again.")
                job._transition(CANCELLED)
                job.message = f"stopped: {job.stop_reason}" if job.stop_reason else "cancelled"
        except BaseException as exc:  # noqa: BLE001 - every failure becomes a message, never a crash
            job.debug = traceback.format_exc()
            job.error = describe_error(exc)
            with job._lock:
                if job.state not in FINAL_STATES:
                    job._transition(FAILED)
            job.message = "failed"
        finally:
            if holding_gpu:
                self.gpu_queue.release(job.id)
            job._done.set()

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def jobs(self) -> list[Job]:
        with self._lock:
            return list(self._jobs.values())

    def cancel(self, job_id: str) -> bool:
        job = self.get(job_id)
        return job.cancel() if job else False

    def shutdown(self, timeout: float = 10.0) -> None:
        """Cancel every active job and wait up to ``timeout`` seconds for their threads (called at
        interpreter exit, so no thread is torn down inside native code)."""
        deadline = time.time() + timeout
        for job in self.jobs():
            if job.state not in FINAL_STATES:
                job.stop_reason = SHUTDOWN_REASON
                job.cancel()
        for job in self.jobs():
            if job.thread is not None and job.thread.is_alive():
                job.thread.join(max(0.0, deadline - time.time()))

    def _prune(self) -> None:
        finished = [j for j in self._jobs.values() if j.state in FINAL_STATES]
        for j in finished[: max(0, len(self._jobs) - self.keep)]:
            del self._jobs[j.id]


def _is_accelerator(device: str | None) -> bool:
    if not device:
        return False
    from .utils import resolve_device

    try:
        return resolve_device(device).type in ("cuda", "mps")
    except ValueError:
        return False


SHUTDOWN_REASON = "the app's server shut down"
_RUNNER: JobRunner | None = None
_RUNNER_LOCK = threading.Lock()


def get_runner() -> JobRunner:
    """The process-wide runner (the app wraps it in ``st.cache_resource``)."""
    global _RUNNER
    with _RUNNER_LOCK:
        if _RUNNER is None:
            import atexit

            _RUNNER = JobRunner()
            atexit.register(_RUNNER.shutdown)
        return _RUNNER


# --------------------------------------------------------------------------- the app's jobs

DEMO_METHODS = ("retrain", "mixunlearn", "finetune", "neggrad")
DEMO_DATASET, DEMO_FORGET, DEMO_SEED = "digits", "class:3", 0


def demo_methods() -> tuple[str, ...]:
    """The Home demo's methods: Retrain, MixUnlearn and two baselines (those registered)."""
    from .methods import method_names

    known = set(method_names())
    return tuple(m for m in DEMO_METHODS if m in known)


def experiment_key(cfg) -> str:
    """The identity of an experiment job: its resolved config as canonical JSON (two jobs of one
    key would compute the same run)."""
    return "experiment:" + json.dumps(cfg.resolved().to_dict(), sort_keys=True, default=str)


def demo_config(device: str = "auto"):
    """The Home demo: digits, forget class 3, Retrain + MixUnlearn + FT + NegGrad, seed 0."""
    from .experiment import ExperimentConfig

    return ExperimentConfig(dataset=DEMO_DATASET, forget=DEMO_FORGET, methods=demo_methods(), seed=DEMO_SEED,
                            device=device)


def experiment_job(cfg, *, store=None, cache=None, project: str | None = "umap", label: str = "",
                   probe_size: int = 64, analyses: bool = True) -> JobFn:
    """A job function that runs :func:`~mixunlearn.experiment.run_experiment` with live probe
    accuracies, builds the analysis pack, and commits everything to the run store.

    The run is registered as ``running`` first; a failure or cancel marks it ``failed`` /
    ``cancelled`` (never complete). After the commit the default embedding projection is
    computed and cached as an artifact (a failure there only leaves a message: the page
    recomputes it on demand). Returns ``{"run_id": ...}``.
    """

    def run(job: Job) -> dict[str, Any]:
        from . import analysis
        from .experiment import prepare_data, run_experiment
        from .metrics import ProbeAccuracy
        from .store import RunStore
        from .utils import resolve_device

        resolved = cfg.resolved()
        st = store or RunStore()
        run_id = st.begin(resolved.to_dict(), label=label)
        job.run_id, job.run_store = run_id, st
        try:
            job.say(f"loading {resolved.dataset}")
            data = prepare_data(resolved, resolve_device(resolved.device))
            job.raise_if_cancelled()
            probe = ProbeAccuracy(data, n=probe_size, seed=resolved.seed)
            result = run_experiment(resolved, callbacks=[probe, job.callback], cache=cache, keep_models=True,
                                    data=data, analyses=analyses)
            job.raise_if_cancelled()
            job.say("evaluating every model on the analysis subsets")
            order = ["original", "retrain"] + [m for m in result.methods if m != "retrain" and m in result.models]
            pack = analysis.build_pack({m: result.models[m] for m in order}, data, seed=resolved.seed)
            results, tensors, files = run_payload(result, pack, job.progress.history())
            job.raise_if_cancelled()
            with job.point_of_no_return():
                job.say("saving the run")
                st.commit(run_id, results, tensors, files)
        except BaseException as exc:
            status = "cancelled" if isinstance(exc, RunCancelled) else "failed"
            why = describe_error(exc)
            if status == "cancelled" and job.stop_reason:  # a shutdown, not the user's Cancel
                status, why = "interrupted", f"interrupted: {job.stop_reason} while the run was in progress"
            try:
                st.finish_unsuccessful(run_id, status, why)
            except Exception:  # the store itself may be the problem; the job's own error says so
                pass
            raise
        if project:
            try:
                job.say(f"projecting embeddings ({analysis.PROJECTION_TITLES[project]})")
                layouts = analysis.project(pack.features, project, reference="original", seed=resolved.seed)
                st.save_artifact(run_id, f"proj-{project}", analysis.projections_to_tensors(layouts))
            except Exception as exc:  # noqa: BLE001 - optional cache; the page recomputes on demand
                job.say(f"embedding projection postponed: {describe_error(exc)}")
        job.say("done")
        return {"run_id": run_id}

    return run


def run_payload(result, pack, live_history: dict | None = None) -> tuple[dict, dict, dict]:
    """(results JSON, tensors, files) of an experiment for the run store."""
    import json

    from . import analysis
    from .datasets import get_info
    from .methods import get_method

    cfg = result.config
    info = get_info(cfg.dataset)
    results = result.to_json()
    tensors = pack.to_tensors()
    tensors.update(getattr(result, "diagnostics", None) or {})  # the attack's per-example view (diagnostics.py)
    extras_summary: dict[str, dict[str, int]] = {}
    for name, rec in result.methods.items():
        snaps = rec.extras.get("snapshots") if isinstance(rec.extras, dict) else None
        hist = rec.extras.get("history") if isinstance(rec.extras, dict) else None
        if snaps:
            tensors.update(analysis.snapshots_to_tensors(name, snaps))
        if hist:
            tensors.update(analysis.history_to_tensors(name, hist))
        if snaps or hist:
            extras_summary[name] = {"snapshots": len(snaps or []), "history": len(hist or [])}
    for source, rows in (live_history or {}).items():
        if rows:
            tensors.update(analysis.history_to_tensors(f"live/{source}", rows))
    display = {"original": "Original", "retrain": "Retrain"}
    for name in result.methods:
        if name != "retrain":
            try:
                display[name] = get_method(name).display
            except ValueError:
                display[name] = name
    results["app"] = {
        "models": list(pack.models), "display": display, "class_names": list(info.class_names),
        "channels": info.channels, "size": info.size, "forget_classes": list(pack.forget_classes),
        "dataset_title": info.title, "extras": extras_summary,
        "labels": {n: r.labels for n, r in result.methods.items()},
    }
    files = {"config.json": json.dumps(cfg.to_dict(), indent=2, default=str),
             "metrics.csv": comparison_csv(results)}
    return results, tensors, files


def comparison_rows(results: dict) -> list[dict[str, Any]]:
    """The Compare table: Retrain first, then the methods, then the original model for
    reference. Each row: method, display, labels, status, seconds, gap, error and every metric."""
    app = results.get("app", {})
    display = app.get("display", {})
    rows = []
    methods = results.get("methods", {})
    order = ["retrain"] + [m for m in methods if m != "retrain"]
    for name in order:
        rec = methods.get(name)
        if rec is None:
            continue
        rows.append({"method": name, "display": display.get(name) or _display(name), "labels": rec.get("labels", ""),
                     "status": rec.get("status", "done"), "seconds": rec.get("seconds"),
                     "gap": rec.get("gap_to_retrain"), "error": rec.get("error", ""),
                     "cached": rec.get("cached", False), **(rec.get("metrics") or {})})
    orig = results.get("original")
    if orig:
        rows.append({"method": "original", "display": "Original (before unlearning)", "labels": "",
                     "status": orig.get("status", "done"), "seconds": orig.get("seconds"),
                     "gap": orig.get("gap_to_retrain"), "error": "", "cached": orig.get("cached", False),
                     **(orig.get("metrics") or {})})
    return rows


def _display(name: str) -> str:
    """A method's display name from the registry (runs stored without the app's names, e.g. by the CLI)."""
    from .methods import get_method

    try:
        return get_method(name).display
    except ValueError:
        return name


def comparison_csv(results: dict) -> str:
    import csv
    import io

    from .metrics import ALL_METRICS

    rows = comparison_rows(results)
    cols = ["method", "display", "labels", "status", *ALL_METRICS, "gap", "seconds", "error"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in cols})
    return buf.getvalue()


def models_job(cfg, *, cache=None) -> JobFn:
    """Train (or load from the cache) the original model and Retrain of an experiment config;
    returns their test accuracies and whether they came from the cache."""

    def run(job: Job) -> dict[str, Any]:
        from .experiment import prepare_data
        from .metrics import accuracy, predict_logits
        from .training import ModelCache, get_recipe, get_trained
        from .utils import resolve_device

        resolved = cfg.resolved()
        job.say(f"loading {resolved.dataset}")
        data = prepare_data(resolved, resolve_device(resolved.device))
        recipe = get_recipe(resolved.recipe)
        out: dict[str, Any] = {"config": resolved.to_dict()}
        for kind in ("original", "retrain"):
            trained = get_trained(kind, data, resolved.model, recipe, [job.callback], cache or ModelCache())
            logits = predict_logits(trained.model, data.x_test)
            out[kind] = {"test_acc": accuracy(logits, data.y_test), "seconds": trained.seconds,
                         "cached": trained.cached}
        job.say("original and Retrain are ready")
        return out

    return run


def toy_job(cfg) -> JobFn:
    """The Learn page's toy (:func:`mixunlearn.toy.run_toy`) as a job."""

    def run(job: Job):
        from .toy import run_toy

        def report(stage: str, fraction: float) -> None:
            job.callback(ProgressEvent("toy", "toy", int(round(100 * fraction)), 100, message=stage))

        return run_toy(cfg, callback=report)

    return run
