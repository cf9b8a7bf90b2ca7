"""Hardening round 2 (issue 13), the app's cases (docs/hardening.md, "Round 2 (issue 13): app and
test audit"), through streamlit.testing.v1.AppTest: an unusable MIXUNLEARN_HOME (5), a tab that
finds its running job again after a reload and a demo that is not started twice (8; the real
reload is in tests/test_browser.py), a data folder whose name is too long (9), the sidebar and
the page reading one clock (10) and a run picker that tells runs of one title apart.

No test here trains: experiment jobs are replaced by jobs that wait on a gate."""

from __future__ import annotations

import functools
import sqlite3
import threading
import time
import types
from pathlib import Path

import pytest
import streamlit.testing.v1.local_script_runner as local_script_runner
from streamlit.testing.v1 import AppTest

from mixunlearn import jobs
from mixunlearn.jobs import get_runner

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")
PAGES = ["pages/1_Setup.py", "pages/2_Unlearn.py", "pages/3_Compare.py", "pages/4_Embeddings.py",
         "pages/5_Loss_KDE.py", "pages/6_Generator.py"]


@pytest.fixture(autouse=True)
def _served_like_streamlit_run(monkeypatch):
    """No UMAP warm-up thread (the pages directory flag: tests/conftest.py)."""
    import ui.state

    monkeypatch.setattr(ui.state, "_warm_started", True)  # no UMAP warm-up thread


@pytest.fixture
def gate(monkeypatch):
    """Experiment jobs that wait until the gate opens (then finish without a run): a run that is
    still in progress for as long as a test needs."""
    opened = threading.Event()

    def waiting_job(cfg, **kwargs):
        def run(job):
            job.say("training the original model")
            assert opened.wait(120)
            return {}
        return run

    monkeypatch.setattr(jobs, "experiment_job", waiting_job)
    yield opened
    opened.set()


def _texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


def _app(query: dict | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    if query:
        at.query_params.update(query)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _open(at: AppTest, page: str) -> AppTest:
    at.switch_page(page)
    at.run()
    assert not at.exception, f"{page}: {[e.value for e in at.exception]}"
    return at


def _run_fragments(at: AppTest) -> AppTest:
    """Rerun only the fragments of the last run, as the browser does on their ``run_every`` tick
    (AppTest has no call for it: the rerun request gets the fragment ids). The returned tree holds
    only what the fragments drew; whatever else a browser shows stays as the last full run left it."""
    ids = list(at._fragment_storage._fragments)
    assert ids, "the page has no fragment"
    plain = local_script_runner.RerunData
    local_script_runner.RerunData = functools.partial(plain, fragment_id_queue=ids, is_fragment_scoped_rerun=True)
    try:
        at.run()
    finally:
        local_script_runner.RerunData = plain
    assert not at.exception, [e.value for e in at.exception]
    return at


# --------------------------------------------------------------------------- 5. MIXUNLEARN_HOME is a file


def test_a_home_that_is_a_file_is_one_message_naming_it_on_every_page(tmp_path, monkeypatch):
    home = tmp_path / "not-a-folder"
    home.write_text("a file where the home folder should be")
    monkeypatch.setenv("MIXUNLEARN_HOME", str(home))
    at = _app()
    for page in [None, *PAGES]:
        if page:
            _open(at, page)
        errors = [e.value for e in at.error]
        assert len(errors) == 1, (page, errors)
        assert "MIXUNLEARN_HOME" in errors[0] and str(home) in errors[0], (page, errors)
        assert "folder" in errors[0] and "restart the app" in errors[0], (page, errors)
        assert "Unexpected error" not in errors[0] and "Errno" not in errors[0], (page, errors)
    _open(at, "pages/7_Learn.py")  # the toy needs no home folder
    assert not at.error
    assert home.read_text() == "a file where the home folder should be"  # left as it was


# --------------------------------------------------------------------------- 8. reload mid-run, no second demo


def test_a_new_session_with_the_job_token_finds_its_running_demo(gate):
    first = _app()
    first.button(key="demo_button").click().run()
    job = get_runner().get(first.session_state["experiment_job"])
    assert job.view(with_history=False).active
    assert first.query_params.get("job") in (job.token, [job.token])  # the tab's URL holds the job's token
    # A reload is a new session with the same URL: it shows the running demo, not "No finished run yet"
    # with a live button.
    reloaded = _app({"job": job.token})
    assert reloaded.session_state["experiment_job"] == job.id
    assert reloaded.button(key="demo_button").disabled
    assert "Default demo" in _texts(reloaded.info) and "No finished run yet: start the demo" not in _texts(
        reloaded.info)
    assert reloaded.button(key=f"cancel-{job.id}")  # its progress panel, with Cancel
    # An unknown token (say, from before a restart) is dropped, and the page is as new.
    stale = _app({"job": "not-a-token"})
    assert "experiment_job" not in stale.session_state and "job" not in stale.query_params
    assert not stale.button(key="demo_button").disabled


def test_a_second_identical_demo_joins_the_running_one(gate):
    first = _app()
    first.button(key="demo_button").click().run()
    job = get_runner().get(first.session_state["experiment_job"])
    other = _app()  # another tab, without the token
    other.button(key="demo_button").click().run()
    assert not other.exception
    assert other.session_state["experiment_job"] == job.id  # joined, not a second run
    assert "already in progress" in _texts(other.info) and "no second one was started" in _texts(other.info)
    key = jobs.experiment_key(jobs.demo_config())
    assert [j for j in get_runner().jobs() if j.key == key and j.view(with_history=False).active] == [job]
    gate.set()
    assert job.wait(30) and job.state == jobs.DONE
    # Once it has ended, the same demo starts anew.
    third = _app()
    third.button(key="demo_button").click().run()
    assert third.session_state["experiment_job"] != job.id


# --------------------------------------------------------------------------- 9. a data folder name too long


def test_a_data_folder_with_a_300_character_name_is_a_message_next_to_the_field(tmp_path):
    at = _app()
    _open(at, "pages/1_Setup.py")
    folder = str(tmp_path / ("a" * 300) / "mnist")
    at.text_input(key="setup_data_root").set_value(folder).run()
    assert not at.exception
    errors = _texts(at.error)
    assert "Something went wrong" not in errors and "Errno" not in errors
    assert "The data folder" in errors and "300 characters" in errors and "at most 255" in errors
    assert len(at.error) == 1
    field = at.text_input(key="setup_data_root")  # still there, with what was typed, to be corrected
    assert field.value == folder
    assert at.button(key="train_button").disabled
    assert at.selectbox(key="setup_dataset").value == "digits"  # the rest of the page is there
    # Unlearn refuses to start with it, saying the same.
    _open(at, "pages/2_Unlearn.py")
    at.button(key="run_button").click().run()
    assert not at.exception and "300 characters" in _texts(at.error) and "nothing was started" in _texts(at.error)
    assert "experiment_job" not in at.session_state
    # Corrected on Setup: the message goes, Train is back.
    _open(at, "pages/1_Setup.py")
    at.text_input(key="setup_data_root").set_value("").run()
    assert not at.exception and not at.error
    assert not at.button(key="train_button").disabled


# --------------------------------------------------------------------------- a seed beyond 2**32 - 1 (R2.3)


def test_a_seed_out_of_range_in_a_session_is_a_message_before_any_job():
    from ui.state import DEFAULT_SETUP

    at = _app()
    at.session_state["setup"] = {**DEFAULT_SETUP, "seed": 2**32}
    _open(at, "pages/2_Unlearn.py")
    at.button(key="run_button").click().run()
    assert not at.exception
    assert "seed 4294967296 is out of range" in _texts(at.error) and "experiment_job" not in at.session_state


# --------------------------------------------------------------------------- 10. one clock


def test_the_sidebar_and_the_page_show_the_same_running_time(gate, monkeypatch):
    at = _app()
    at.button(key="demo_button").click().run()
    job = get_runner().get(at.session_state["experiment_job"])
    deadline = time.monotonic() + 30
    while job.state != jobs.RUNNING:
        assert time.monotonic() < deadline, job.state
        time.sleep(0.01)
    at.run()
    assert "(0 s)" in _texts(at.sidebar.info)
    # 11 s later (the job's clock, frozen there), the page's progress fragment and the sidebar tick.
    now = job.started + 11.0
    monkeypatch.setattr(jobs, "time", types.SimpleNamespace(time=lambda: now, sleep=time.sleep,
                                                             monotonic=time.monotonic))
    _run_fragments(at)
    sidebar = _texts(at.sidebar.info)
    page = _texts(at.main.info)
    assert "Default demo running (11 s)" in sidebar, sidebar
    assert "(11 s)" in page or "(11 s of about" in page, page  # the page adds the estimate when it has one


# --------------------------------------------------------------------------- the run picker


def test_the_run_picker_tells_runs_with_the_same_title_apart():
    from test_app import _synthetic_run  # tests/ is on sys.path (no package)

    from mixunlearn.store import RunStore

    store = RunStore()
    ids = [_synthetic_run(store) for _ in range(2)]
    with sqlite3.connect(store.db_path) as con:  # both started in the same minute, 7 s apart
        base = 60 * (int(time.time()) // 60)
        con.execute("UPDATE runs SET created = ? WHERE id = ?", (base + 3, ids[0]))
        con.execute("UPDATE runs SET created = ? WHERE id = ?", (base + 10, ids[1]))
    rows = {r.id: r for r in store.list_runs("complete")}
    assert rows[ids[0]].title == rows[ids[1]].title  # what the picker used to show for both
    at = _app()
    _open(at, "pages/3_Compare.py")
    labels = at.selectbox(key="run_picker").options
    assert len(labels) == 2 and len(set(labels)) == 2, labels
    for run_id, label in zip(reversed(ids), labels):  # newest first
        assert label.startswith(rows[run_id].title) and run_id[-6:] in label and "started" in label
