"""Process-wide resources and per-session state.

- The job runner and the run store are process-wide (``st.cache_resource``): jobs outlive page
  scripts, reruns and navigation.
- Each browser session remembers its job ids and its choices in ``st.session_state``.
"""

from __future__ import annotations

import atexit
import logging
import threading
from pathlib import Path
from typing import Any

import streamlit as st

from mixunlearn import jobs
from mixunlearn.store import RunRow, RunStore, StoreError
from mixunlearn.utils import home_dir

log = logging.getLogger("mixunlearn.app")

# Session-state keys (one place, so pages never disagree on a name).
K_SETUP = "setup"
K_RUN = "run_id"  # the run the analysis pages show
K_EXPERIMENT_JOB = "experiment_job"
K_MODELS_JOB = "models_job"
K_TOY_JOB = "toy_job"
K_PROJECTION_JOBS = "projection_jobs"
K_SEEN_FINAL = "seen_final_jobs"

DEFAULT_SETUP = {"dataset": "digits", "model": None, "kind": "class", "classes": [3], "fraction": 0.4,
                 "seed": 0, "device": "auto", "data_root": ""}


@st.cache_resource(show_spinner=False)
def runner() -> jobs.JobRunner:
    """The process-wide job runner."""
    return jobs.get_runner()


@st.cache_resource(show_spinner=False)
def _store_at(path: str) -> RunStore:
    store = RunStore(path)
    stale = store.recover()  # runs left "running" by a process that is gone
    if stale:
        log.info("marked %d interrupted run(s)", len(stale))
    return store


def store() -> RunStore:
    """The run store under ``$MIXUNLEARN_HOME/store``; raises StoreError when unusable."""
    return _store_at(str(home_dir() / "store"))


_warm_lock = threading.Lock()
_warm_started = False


def warm_up_projections() -> None:
    """Compile umap-learn's kernels once per process in a background thread, so the first
    embedding projection after a run does not pay the ~15 s compile."""
    global _warm_started
    with _warm_lock:
        if _warm_started:
            return
        _warm_started = True
    # umap-learn imports pandas. Plotly, building a figure on another thread, takes pandas from
    # sys.modules without importing it, so a half-imported pandas there fails the figure
    # ("partially initialized module 'pandas'"); import it fully here, before the thread starts.
    import pandas  # noqa: F401

    def work() -> None:
        try:
            from mixunlearn.analysis import warm_up_umap

            warm_up_umap()
        except Exception:  # noqa: BLE001 - only a speed-up
            log.exception("UMAP warm-up failed")

    thread = threading.Thread(target=work, name="mixunlearn-umap-warmup", daemon=True)
    thread.start()
    # Let a compile in progress finish at exit rather than tearing the thread down inside numba.
    atexit.register(thread.join, 60.0)


def setup() -> dict[str, Any]:
    """This session's experiment choices (dataset, model, forget spec, seed, device)."""
    if K_SETUP not in st.session_state:
        st.session_state[K_SETUP] = dict(DEFAULT_SETUP)
    return st.session_state[K_SETUP]


def forget_spec_text(s: dict[str, Any]) -> str:
    classes = ",".join(str(c) for c in sorted(s.get("classes") or []))
    if s["kind"] == "class":
        return f"class:{classes}"
    try:
        fraction = f"{float(s['fraction']):g}"
    except (TypeError, ValueError):  # kept as text: parsing the spec then says what is wrong with it
        fraction = str(s.get("fraction"))
    return f"{s['kind']}:{classes}:{fraction}"


def job(key: str) -> jobs.Job | None:
    """This session's job stored under ``key`` (None when absent or forgotten by the runner)."""
    job_id = st.session_state.get(key)
    return runner().get(job_id) if job_id else None


def remember_job(key: str, job: jobs.Job) -> None:
    st.session_state[key] = job.id


def complete_runs() -> list[RunRow]:
    """Complete runs, newest first; raises StoreError when the store cannot be read."""
    return store().list_runs("complete")


def current_run_id() -> str | None:
    """The run shown by the analysis pages: the session's choice, else the newest complete run."""
    chosen = st.session_state.get(K_RUN)
    try:
        runs = complete_runs()
    except StoreError:
        return None
    ids = [r.id for r in runs]
    if chosen in ids:
        return chosen
    return ids[0] if ids else None


@st.cache_resource(show_spinner=False, max_entries=6)
def _load_run(root: str, run_id: str) -> tuple[RunRow, dict]:
    s = _store_at(root)
    return s.get(run_id), s.load_tensors(run_id)


def load_run(run_id: str) -> tuple[RunRow, dict]:
    """(run row, tensors) of a complete run, cached per process."""
    return _load_run(str(Path(store().root)), run_id)
