"""Hardening round 3 (docs/hardening.md, "Round 3"), the app's case: a reloaded tab finds the
generator playground's run again through the URL (``?pg=…``), as it finds the experiment job
(``?job=…``). Through AppTest and app.py; no test here trains: the playground's run waits on a gate."""

from __future__ import annotations

import threading

import pytest
from test_app import _synthetic_run
from test_hardening2_app import _app, _open, _texts

import ui.playground
from mixunlearn import jobs
from mixunlearn.jobs import get_runner
from mixunlearn.progress import ProgressEvent

PAGE = "pages/6_Generator.py"


@pytest.fixture(autouse=True)
def _no_warm_up(monkeypatch):
    import ui.state

    monkeypatch.setattr(ui.state, "_warm_started", True)  # no UMAP warm-up thread


@pytest.fixture
def gate(monkeypatch):
    """Playground runs that wait until the gate opens (then end without a result)."""
    opened = threading.Event()

    def waiting(cfg, overrides, method, base, train_missing):
        def run(job):
            job.callback(ProgressEvent("playground", "start", 0, 1, message="starting"))
            assert opened.wait(120)
            return {}
        return run

    monkeypatch.setattr(ui.playground, "_run_fn", waiting)
    yield opened
    opened.set()


def test_a_reloaded_tab_finds_its_running_playground_run_through_the_url(gate):
    from mixunlearn.store import RunStore

    run_id = _synthetic_run(RunStore())
    key = f"pg:{run_id}:mixunlearn"
    first = _open(_app(), PAGE)
    first.button(key=f"{key}:run").click().run()
    assert not first.exception, [e.value for e in first.exception]
    job = get_runner().get(first.session_state["playground_job"])
    assert job.kind == "playground" and job.view(with_history=False).active
    assert first.query_params.get("pg") in (job.token, [job.token])  # the tab's URL holds the run's token
    # A reload is a new session with the same URL: the run is followed (progress, Cancel), not lost,
    # and Run stays off while it is in progress.
    reloaded = _open(_app({"pg": job.token}), PAGE)
    assert reloaded.session_state["playground_job"] == job.id
    assert reloaded.button(key=f"cancel-{job.id}")
    assert reloaded.button(key=f"{key}:run").disabled
    # ... and it can be cancelled from there.
    reloaded.button(key=f"cancel-{job.id}").click().run()
    gate.set()
    assert job.wait(30) and job.state == jobs.CANCELLED
    # A token of another kind of job, or one the runner does not know, is dropped.
    other = get_runner().submit(lambda j: None, label="not a playground", kind="projection", gpu=False)
    assert other.wait(30)
    for token in (other.token, "not-a-token"):
        stale = _open(_app({"pg": token}), PAGE)
        assert "playground_job" not in stale.session_state and "pg" not in stale.query_params
        assert not stale.button(key=f"{key}:run").disabled
    assert "Playground" in _texts(stale.subheader)
