"""Polling a background job from a page: a fragment that re-runs every second while the job is
active, shows per-source progress, live curves and a Cancel button, and reruns the whole page
once when the job reaches a final state (so results appear without a click)."""

from __future__ import annotations

import time
from collections.abc import Callable

import streamlit as st

from mixunlearn.jobs import CANCELLED, CANCELLING, DONE, FAILED, QUEUED, Job, JobView

from . import state

POLL_SECONDS = 1.5
SOURCE_TITLES = {"experiment": "setup", "original": "original model", "retrain": "Retrain", "job": "job"}


def _source_title(src: str, titles: dict[str, str]) -> str:
    return titles.get(src) or SOURCE_TITLES.get(src, src)


def format_seconds(seconds: float) -> str:
    """:func:`mixunlearn.estimate.format_seconds` (imported on use: the estimate module loads torch,
    which the first paint of a page must not wait for)."""
    from mixunlearn.estimate import format_seconds as fmt

    return fmt(seconds)


def elapsed_text(view: JobView) -> str:
    """The job's age as shown everywhere (page status and sidebar): the job's own clock,
    :attr:`JobView.elapsed`, in whole seconds."""
    return f"{view.elapsed:.0f} s"


def _status_line(view: JobView) -> None:
    elapsed = elapsed_text(view)
    if view.estimate_s and view.state not in (DONE, FAILED, CANCELLED):
        elapsed += f" of about {format_seconds(view.estimate_s)} estimated"
    if view.state == QUEUED:
        st.info(f"{view.label}: {view.message} ({elapsed})", icon=":material/hourglass_top:")
    elif view.state == CANCELLING:
        st.warning(f"Stopping {view.label}… ({view.message})", icon=":material/stop_circle:")
    elif view.state == DONE:
        st.success(f"{view.label} finished in {elapsed}.", icon=":material/check_circle:")
    elif view.state == FAILED:
        st.error(f"{view.label} failed. {view.error}", icon=":material/error:")
    elif view.state == CANCELLED:
        st.warning(f"{view.label} was cancelled; nothing was saved. Start it again when you are ready.",
                   icon=":material/cancel:")
    else:
        st.info(f"{view.label}: {view.message} ({elapsed})", icon=":material/settings:")


def _source_bars(view: JobView, titles: dict[str, str]) -> None:
    for src, ev in view.latest.items():
        if src in ("job",):
            continue
        frac = ev["fraction"] if ev["total"] else (1.0 if ev["phase"] in ("cache", "evaluate") else 0.0)
        if ev["phase"] in ("evaluate",):
            frac = 1.0
        text = f"{_source_title(src, titles)} — {ev['phase']}"
        if ev["total"] and ev["phase"] not in ("cache", "evaluate", "start"):
            text += f" {ev['step']}/{ev['total']}"
        if ev.get("eta") and ev["phase"] not in ("cache", "evaluate", "start"):
            text += f" · about {format_seconds(ev['eta'])} left"
        if ev["losses"]:
            text += " · " + ", ".join(f"{k} {v:.3g}" for k, v in list(ev["losses"].items())[:3])
        if ev["message"] and ev["phase"] in ("cache", "failed"):
            text += f" · {ev['message']}"
        st.progress(min(1.0, max(0.0, float(frac))), text=text)


def _curves(view: JobView, titles: dict[str, str]) -> None:
    from mixunlearn import figures

    hist = {s: h for s, h in view.history.items() if s not in ("original", "retrain")}
    if not hist:
        return
    if any("probe_forget_acc" in r for h in hist.values() for r in h):
        st.plotly_chart(figures.probe_curves(hist, titles=titles, title="forget / retain accuracy on small probe sets"),
                        key=f"live-probe-{view.id}-{view.version}")
    st.plotly_chart(figures.loss_curves(hist, titles=titles, title="logged losses", max_cols=3),
                    key=f"live-loss-{view.id}-{view.version}")


def _live_generator(job: Job, view: JobView, titles: dict[str, str]) -> None:
    """The newest generator snapshot of each MixUnlearn source while it trains (λ = 0.5)."""
    from mixunlearn import figures

    for src in job.progress.snapshot_sources():
        snaps = job.progress.snapshots(src)
        if not snaps:
            continue
        with st.expander(f"{_source_title(src, titles)}: newest generator snapshot "
                         f"(update {snaps[-1].get('update', '?')})", expanded=False):
            st.plotly_chart(figures.generator_grid(snaps[-1], 1, max_pairs=4),
                            key=f"live-gen-{view.id}-{src}-{view.version}")


def show_job(job_key: str, *, titles: dict[str, str] | None = None, curves: bool = True,
             on_done: Callable[[Job], None] | None = None, cancel: bool = True) -> Job | None:
    """Show this session's job stored under ``job_key``; returns the job (None when absent).

    While the job is active, a fragment refreshes every second. When it reaches a final state
    the whole page reruns once; ``on_done(job)`` runs once per finished job (e.g. to select the
    new run) before that rerun.
    """
    job = state.job(job_key)
    if job is None:
        return None
    note = state.pop_notice(job_key)
    if note:
        st.info(note, icon=":material/info:")
    titles = titles or {}
    active = job.view(with_history=False).active

    @st.fragment(run_every=POLL_SECONDS if active else None)
    def panel() -> None:
        view = job.view(with_history=curves)
        _status_line(view)
        if view.active:
            _source_bars(view, titles)
        if curves and view.history:
            _curves(view, titles)
        if curves:
            _live_generator(job, view, titles)
        if view.active and cancel and view.cancellable:
            st.button("Cancel", key=f"cancel-{view.id}", on_click=job.cancel,
                      help="Stop at the next progress report; nothing is saved.")
        elif view.active and cancel and view.state != CANCELLING:
            st.caption("The run is saved and can no longer be cancelled; it finishes its last step "
                       "(e.g. the embedding projection) in a moment.")
        seen = st.session_state.setdefault(state.K_SEEN_FINAL, [])
        if view.final and view.id not in seen:
            seen.append(view.id)
            if on_done is not None and view.state == DONE:
                on_done(job)
            if active:  # the page was drawn while the job ran: redraw it with the results
                st.rerun(scope="app")

    panel()
    return job


def sidebar_status(job_key: str) -> None:
    """This session's active job under ``job_key`` in the sidebar, refreshed on the same poll as the
    page's progress (a fragment of its own) and from the same clock (:func:`elapsed_text`), so the
    two never disagree by more than one poll; it disappears once the job is final."""
    job = state.job(job_key)
    if job is None or job.view(with_history=False).final:
        return

    @st.fragment(run_every=POLL_SECONDS)
    def status() -> None:
        view = job.view(with_history=False)
        if view.state == QUEUED:
            st.info(f"{view.label} waiting ({elapsed_text(view)}): {view.message}", icon=":material/hourglass_top:")
        elif view.active:
            st.info(f"{view.label} running ({elapsed_text(view)}): {view.message}", icon=":material/settings:")

    with st.sidebar:
        status()


def wait_for(job: Job, timeout: float) -> bool:
    """Block (tests, scripts) until ``job`` is final."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if job.wait(0.2):
            return True
    return job.view(with_history=False).final
