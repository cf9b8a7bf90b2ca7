"""Process-wide resources and per-session state.

- The job runner and the run store are process-wide (``st.cache_resource``): jobs outlive page
  scripts, reruns and navigation.
- Each browser session remembers its job ids and its choices in ``st.session_state``. The
  experiment job's token also goes into the page's URL (``?job=…``), and the generator
  playground's (``?pg=…``), so a reloaded tab, which starts a new session, finds its running
  jobs again (:func:`reattach_jobs`).
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import streamlit as st

from mixunlearn import jobs
from mixunlearn.store import RunRow, RunStore, StoreError
from mixunlearn.utils import check_home, home_dir

log = logging.getLogger("mixunlearn.app")

# Session-state keys (one place, so pages never disagree on a name).
K_SETUP = "setup"
K_RUN = "run_id"  # the run the analysis pages show
K_EXPERIMENT_JOB = "experiment_job"
K_MODELS_JOB = "models_job"
K_TOY_JOB = "toy_job"
K_PROJECTION_JOBS = "projection_jobs"
K_SEEN_FINAL = "seen_final_jobs"
K_NOTICE = "job_notice"  # a one-time note shown above a job's progress (e.g. "joined the running run")
JOB_PARAM = "job"  # the URL query parameter holding the experiment job's token
K_PLAYGROUND_JOB = "playground_job"  # the Generator page's playground run (ui/playground.py)
PLAYGROUND_PARAM = "pg"  # the URL query parameter holding the playground job's token
# The jobs a reloaded tab finds again: session key -> (URL parameter, the job kinds it may name;
# None: any kind).
URL_JOBS: dict[str, tuple[str, tuple[str, ...] | None]] = {
    K_EXPERIMENT_JOB: (JOB_PARAM, None),
    K_PLAYGROUND_JOB: (PLAYGROUND_PARAM, ("playground",)),
}

DEFAULT_SETUP = {"dataset": "digits", "model": None, "kind": "class", "classes": [3], "fraction": 0.4,
                 "seed": 0, "device": "auto", "data_root": "", "recipe": None}


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
    """The run store under ``$MIXUNLEARN_HOME/store``; raises StoreError (naming MIXUNLEARN_HOME)
    when it is unusable, also when the folder cannot be created."""
    try:
        root = home_dir() / "store"
        return _store_at(str(root))
    except StoreError:
        raise
    except (OSError, ValueError) as exc:
        raise StoreError(home_message(exc)) from None


def home_message(exc: BaseException) -> str:
    """One line saying why the home folder cannot be used, naming MIXUNLEARN_HOME."""
    text = str(exc)
    if "MIXUNLEARN_HOME" in text:  # the library's own message already names it
        return text
    env = os.environ.get("MIXUNLEARN_HOME")
    where = f"MIXUNLEARN_HOME ({env!r})" if env else "the home folder (MIXUNLEARN_HOME is not set)"
    if isinstance(exc, (FileExistsError, NotADirectoryError)) or getattr(exc, "errno", None) in (errno.EEXIST,
                                                                                                 errno.ENOTDIR):
        why = "it, or a folder on its path, is a file, not a folder"
    else:
        why = f"it cannot be created or written ({getattr(exc, 'strerror', None) or exc})"
    return f"{where} is not usable: {why}; set MIXUNLEARN_HOME to a folder you can write"


def home_problem() -> str | None:
    """Why the home folder (model cache and run store) cannot be used, or None when it can
    (:func:`mixunlearn.utils.check_home`: a folder, writable, its entries folders). Checked on
    every page before anything touches the folder."""
    try:
        check_home()
    except (OSError, ValueError) as exc:
        return home_message(exc) + ", then restart the app."
    return None


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
        try:  # background work: lowest priority (Linux: a thread's own nice value), so the
            # compile does not slow a job or a time probe that starts meanwhile
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except (AttributeError, OSError):
            pass
        try:
            from mixunlearn.analysis import warm_up_umap

            warm_up_umap()
        except Exception:  # noqa: BLE001 - only a speed-up
            log.exception("UMAP warm-up failed")

    # A daemon thread, never joined at exit: a compile in progress must not delay Ctrl-C (ui/shutdown.py
    # ends the process without finalising the interpreter while it runs).
    threading.Thread(target=work, name="mixunlearn-umap-warmup", daemon=True).start()


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
    """This session's job stored under ``key`` (None when absent or forgotten by the runner). A
    session without an experiment (or playground) job takes the one the URL's token names (a
    reloaded tab)."""
    job_id = st.session_state.get(key)
    if not job_id and key in URL_JOBS:
        param, kinds = URL_JOBS[key]
        found = runner().find_token(st.query_params.get(param))
        if found is not None and (kinds is None or found.kind in kinds):
            st.session_state[key] = job_id = found.id
    return runner().get(job_id) if job_id else None


def remember_job(key: str, job: jobs.Job) -> None:
    st.session_state[key] = job.id
    if key in URL_JOBS:
        _put_token(job, URL_JOBS[key][0])


def _put_token(job: jobs.Job, param: str = JOB_PARAM) -> None:
    if st.query_params.get(param) != job.token:
        st.query_params[param] = job.token


def reattach_jobs() -> None:
    """Keep this tab's experiment and playground jobs and the URL's ``?job=`` / ``?pg=`` tokens in
    step, on every page run: a new session (a reloaded tab) whose URL names a job the runner knows
    takes that job as its own; a session with a job puts the job's token back into the URL
    (navigation may drop it); a token the runner does not know (e.g. from before a restart) is
    removed."""
    for key, (param, _) in URL_JOBS.items():
        mine = job(key)  # takes the URL's job when the session has none
        if mine is not None:
            _put_token(mine, param)
        elif param in st.query_params:
            del st.query_params[param]


def notice(key: str, text: str) -> None:
    """A note shown once above the job of ``key`` (after the page reruns)."""
    st.session_state[K_NOTICE] = (key, text)


def pop_notice(key: str) -> str | None:
    held = st.session_state.get(K_NOTICE)
    if held and held[0] == key:
        del st.session_state[K_NOTICE]
        return held[1]
    return None


def complete_runs() -> list[RunRow]:
    """Complete runs, newest first; raises StoreError when the store cannot be read."""
    return store().list_runs("complete")


def run_titles(runs: list[RunRow]) -> dict[str, str]:
    """A title per run, distinct among ``runs``: a title that several runs share (e.g. two default
    demos started in the same minute) gets the start time to the second and the run's short id."""
    counts: dict[str, int] = {}
    for r in runs:
        counts[r.title] = counts.get(r.title, 0) + 1
    out = {}
    for r in runs:
        if counts[r.title] > 1:
            out[r.id] = f"{r.title} · started {time.strftime('%H:%M:%S', time.localtime(r.created))} · {r.id[-6:]}"
        else:
            out[r.id] = r.title
    return out


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
