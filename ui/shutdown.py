"""The app stops promptly on Ctrl-C (SIGINT) and SIGTERM, whatever is running.

Streamlit answers both signals by stopping its server; the process then ends like any Python
program: it first joins every non-daemon thread (a page script still running, e.g. a torch
import or a time probe, is one) and then runs the ``atexit`` handlers (the job runner's). Either
can take long: a script runs native code that no stop request interrupts.

:func:`install` registers a hook that runs first, on the main thread, before those joins
(``threading._register_atexit``, the hook ``concurrent.futures`` uses). It

1. cancels every active job and gives it up to ``GRACE_S`` seconds to stop on its own (a job that
   stops marks its run ``cancelled``);
2. marks the run of a job still running ``interrupted`` (unless it is already saving: a commit in
   progress is left to finish or, if the process dies first, to the store's recovery, which also
   marks it ``interrupted``);
3. ends the process at once (``os._exit`` after flushing) when any thread that could hold it up is
   still alive: a page script, a job, the UMAP warm-up. Otherwise the normal exit goes on.

Under ``streamlit run`` a watcher thread also starts the same sequence as soon as Streamlit's
runtime starts stopping (it polls the runtime's state, 5 times a second): the exit is then timed
from the signal, not from the moment the interpreter gets round to its exit. Whichever starts
first, a watchdog ends the process ``DEADLINE_S`` seconds later whatever happens, so even a step
stuck on a lock cannot keep the server alive.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time

GRACE_S = 2.0  # how long cancelled jobs get to stop by themselves
DEADLINE_S = 4.0  # the process ends at most this long after the exit began
INTERRUPTED = ("interrupted: the app was stopped (Ctrl-C or SIGTERM) while the run was in progress; "
               "nothing was saved")

log = logging.getLogger("mixunlearn.app")
_lock = threading.Lock()
_installed = False


def under_streamlit_server() -> bool:
    """Whether this process is a ``streamlit run`` server (Streamlit's bootstrap, which starts the
    server, is loaded), not e.g. pytest running the app through AppTest, whose own exit (and exit
    status) must stay as is. (``__main__`` tells nothing: Streamlit runs each script as ``__main__``.)"""
    return "streamlit.web.bootstrap" in sys.modules


def install(*, anywhere: bool = False) -> bool:
    """Register the exit hook once per process, only in a ``streamlit run`` process unless
    ``anywhere``; True when this call registered it."""
    global _installed
    if not anywhere and not under_streamlit_server():
        return False
    with _lock:
        if _installed:
            return False
        try:
            threading._register_atexit(on_exit)  # runs before the interpreter joins non-daemon threads
        except (AttributeError, RuntimeError):  # pragma: no cover - a Python without it, or exiting already
            import atexit

            atexit.register(on_exit)
        _installed = True
    if not anywhere or under_streamlit_server():
        threading.Thread(target=_watch_runtime, name="mixunlearn-exit-watch", daemon=True).start()
    return True


def _watch_runtime(poll_s: float = 0.2) -> None:
    """Start the exit sequence once Streamlit's runtime is stopping (SIGINT / SIGTERM)."""
    try:
        from streamlit.runtime import Runtime, RuntimeState
    except ImportError:  # pragma: no cover - a Streamlit without these names: the exit hook still works
        return
    stopping = (RuntimeState.STOPPING, RuntimeState.STOPPED)
    while True:
        time.sleep(poll_s)
        try:
            if Runtime.instance().state in stopping:
                break
        except RuntimeError:  # no runtime (yet)
            continue
    begin_exit()


def _hard_exit(code: int = 0) -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - a closed stream must not keep the process alive
            pass
    os._exit(code)


_begun = threading.Event()
_jobs_handled = threading.Event()


def begin_exit() -> None:
    """The exit sequence's first part, once per process: the watchdog, then the jobs."""
    with _lock:
        if _begun.is_set():
            return
        _begun.set()
    _watchdog(DEADLINE_S)
    try:
        from mixunlearn import jobs

        runner = jobs._RUNNER
        if runner is not None:
            stop_jobs(runner)
    except Exception:  # noqa: BLE001 - exiting matters more than tidying up
        log.exception("stopping the jobs at exit failed")
    finally:
        _jobs_handled.set()


def _watchdog(deadline_s: float) -> None:
    def fire() -> None:
        time.sleep(deadline_s)
        log.warning("exit took longer than %.0f s; ending the process", deadline_s)
        _hard_exit(0)

    threading.Thread(target=fire, name="mixunlearn-exit-watchdog", daemon=True).start()


def stop_jobs(runner, grace_s: float = GRACE_S) -> list:
    """Cancel the runner's active jobs, wait up to ``grace_s`` for them, and mark the run of each
    job still running ``interrupted``. Returns the jobs still alive."""
    from mixunlearn.jobs import FINAL_STATES

    runner.shutdown(timeout=grace_s)
    alive = [j for j in runner.jobs() if j.thread is not None and j.thread.is_alive()]
    for job in alive:
        store = getattr(job, "run_store", None)
        if job.run_id and store is not None and job.state not in FINAL_STATES and not job._no_return:
            try:
                store.finish_unsuccessful(job.run_id, "interrupted", INTERRUPTED)
            except Exception:  # noqa: BLE001 - the store's recovery marks it at the next start
                log.exception("could not mark run %s interrupted", job.run_id)
    return alive


def _holding_threads() -> list[threading.Thread]:
    """Threads other than this one that would delay the exit or run on into it."""
    me = threading.current_thread()
    return [t for t in threading.enumerate()
            if t is not me and t.is_alive() and not t.name.startswith("mixunlearn-exit-")
            and (not t.daemon or t.name.startswith("mixunlearn-"))]


def on_exit() -> None:
    """The exit hook (see the module docstring)."""
    begin_exit()  # a no-op when the watcher began it first; then wait until it has handled the jobs
    _jobs_handled.wait(DEADLINE_S)
    holding = _holding_threads()
    if holding:
        log.info("exiting now; still running: %s", ", ".join(t.name for t in holding))
        logging.shutdown()
        _hard_exit(0)
