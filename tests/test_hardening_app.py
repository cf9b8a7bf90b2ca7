"""The hardening matrix (docs/hardening.md), app rows through streamlit.testing.v1.AppTest that
tests/test_app.py does not already enforce: bad Setup/Unlearn inputs, missing or damaged data
folders, no network, planted pickles (model cache and run store), old run stores, cancel and
restart, two sessions at once on the CPU and on a (simulated) GPU.

Every case checks that no exception reaches the page (``at.exception`` is empty) and that the
page says what went wrong. Originals and Retrains use a one-epoch "tiny" recipe."""

from __future__ import annotations

import functools
import os
import pickle
import threading
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest
from test_hardening import DATA_CASES, _version0_store  # tests/ is on sys.path (no package)

from mixunlearn import jobs, training
from mixunlearn.jobs import get_runner
from mixunlearn.store import RunStore
from mixunlearn.training import Recipe

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")
ANALYSIS_PAGES = ["pages/3_Compare.py", "pages/4_Embeddings.py", "pages/5_Loss_KDE.py", "pages/6_Generator.py"]
TINY = Recipe("tiny", epochs=1, batch_size=64, lr=1e-3, description="one epoch, for tests")


@pytest.fixture(autouse=True)
def _fast_app(monkeypatch):
    """One-epoch originals, PCA instead of UMAP after a run, no UMAP warm-up thread."""
    import ui.state

    monkeypatch.setitem(training.RECIPES, "tiny", TINY)
    monkeypatch.setitem(training.DEFAULT_RECIPE, "digits", "tiny")
    monkeypatch.setattr(ui.state, "_warm_started", True)
    monkeypatch.setattr(jobs, "experiment_job", functools.partial(jobs.experiment_job, project="pca"))


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """The app never downloads: any attempt is recorded (and would fail as offline)."""
    import mixunlearn.datasets as ds

    tried: list = []

    def offline(name, root):
        tried.append(name)
        raise OSError("no network")

    monkeypatch.setattr(ds, "_torchvision_download", offline)
    yield tried
    assert tried == [], "the app tried to download data"


def _texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


def _app(page: str | None = None, setup: dict | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    if setup is not None:
        from ui.state import DEFAULT_SETUP

        at.session_state["setup"] = {**DEFAULT_SETUP, **setup}
    if page:
        _open(at, page)
    return at


def _open(at: AppTest, page: str) -> AppTest:
    at.switch_page(page)
    at.run()
    assert not at.exception, f"{page}: {[e.value for e in at.exception]}"
    return at


def _no_traceback(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    shown = _texts(at.error) + _texts(at.warning) + _texts(at.info) + _texts(at.markdown)
    assert "Traceback" not in shown and 'File "' not in shown


def _job(at: AppTest, key: str) -> jobs.Job:
    job = get_runner().get(at.session_state[key])
    assert job is not None
    return job


def _finish(at: AppTest, key: str, timeout: float = 240) -> jobs.Job:
    job = _job(at, key)
    deadline = time.time() + timeout
    while not job.wait(0.5):
        assert time.time() < deadline, f"job {job.id} still {job.state}: {job.message}"
    at.run()
    _no_traceback(at)
    return job


# =========================================================================== bad input: Setup


def test_switching_to_data_level_starts_from_a_valid_share():
    at = _app("pages/1_Setup.py")
    at.radio(key="setup_kind").set_value("data").run()
    _no_traceback(at)
    share = at.slider(key="setup_fraction_data")
    assert 0.05 <= share.value <= 0.95 and not at.error
    assert at.session_state["setup"]["fraction"] == share.value
    assert not at.button(key="train_button").disabled


def test_an_empty_class_choice_is_an_error_and_nothing_can_start():
    at = _app("pages/1_Setup.py")
    at.radio(key="setup_kind").set_value("data").run()
    at.multiselect(key="setup_classes_data_digits").set_value([]).run()
    _no_traceback(at)
    assert "The forget set is not valid" in _texts(at.error) and "names no class" in _texts(at.error)
    assert at.button(key="train_button").disabled


# =========================================================================== bad input: Unlearn (stale or odd sessions)


BAD_SETUPS = {
    # case: (session setup, what the error must say)
    "unknown dataset": ({"dataset": "imagenet"}, "unknown dataset 'imagenet'"),
    "unknown model": ({"model": "vgg16"}, "unknown model 'vgg16'"),
    "class out of range": ({"classes": [12]}, "class 12 is out of range"),
    "negative class": ({"classes": [-1]}, "class -1 is negative"),
    "fraction 0": ({"kind": "data", "classes": [5], "fraction": 0.0}, "outside (0, 1)"),
    "fraction 1": ({"kind": "data", "classes": [5], "fraction": 1.0}, "outside (0, 1)"),
    "negative fraction": ({"kind": "data", "classes": [5], "fraction": -0.3}, "outside (0, 1)"),
    "fraction not a number": ({"kind": "data", "classes": [5], "fraction": "lots"}, "'lots' in 'data:5:lots' is not a"),
    "no class": ({"classes": []}, "names no class"),
    "every class": ({"classes": list(range(10))}, "forgets every class"),
    "seed not a number": ({"seed": "x"}, "seed must be a non-negative integer, got 'x'"),
    "non-integer seed": ({"seed": 1.5}, "seed must be a non-negative integer"),
    "negative seed": ({"seed": -2}, "seed must be a non-negative integer"),
    "unknown device": ({"device": "tpu"}, "unknown device 'tpu'"),
}


@pytest.mark.parametrize("case", list(BAD_SETUPS))
def test_unlearn_refuses_a_bad_setup_with_a_message(case):
    """A session whose setup holds a bad value (e.g. left from an older version of the app or another
    dataset) is refused with the library's own message; nothing starts."""
    bad, message = BAD_SETUPS[case]
    at = _app("pages/2_Unlearn.py", setup=bad)
    if "run_button" in {b.key for b in at.button}:  # an unknown dataset stops the page before the button
        at.button(key="run_button").click().run()
    _no_traceback(at)
    assert message in _texts(at.error)
    assert "experiment_job" not in at.session_state  # nothing was started
    assert RunStore().list_runs(status=None) == []


def test_a_malformed_hyper_parameter_is_a_message_not_a_job():
    at = _app("pages/2_Unlearn.py")
    at.multiselect(key="unlearn_methods").set_value(["scrub"]).run()
    at.text_input(key="hp:scrub:digits:lr_decay_epochs").set_value("3,five").run()
    at.button(key="run_button").click().run()
    _no_traceback(at)
    assert "lr_decay_epochs must be an integer, got 'five'" in _texts(at.error)
    assert "experiment_job" not in at.session_state


def test_an_empty_forget_set_fails_the_run_with_a_message_and_stores_nothing_complete():
    # digits has ~146 training images of class 3: a share of 0.001 selects none of them.
    at = _app("pages/2_Unlearn.py", setup={"kind": "data", "classes": [3], "fraction": 0.001})
    at.multiselect(key="unlearn_methods").set_value(["finetune"]).run()
    at.button(key="run_button").click().run()
    job = _finish(at, "experiment_job", 60)
    assert job.state == jobs.FAILED
    assert "empty forget set" in _texts(at.error) and "failed" in _texts(at.error)
    assert RunStore().list_runs() == [] and [r.status for r in RunStore().list_runs(None)] == ["failed"]


# =========================================================================== data folders and no network


@pytest.mark.parametrize("case", list(DATA_CASES))
def test_a_bad_data_folder_is_a_message_on_setup_and_unlearn(case, tmp_path, _no_network):
    make, library_message = DATA_CASES[case]
    folder = make(tmp_path)
    at = _app("pages/1_Setup.py")
    at.text_input(key="setup_data_root").set_value(str(folder)).run()
    at.selectbox(key="setup_dataset").set_value("mnist").run()
    _no_traceback(at)
    errors = _texts(at.error)
    if case in ("missing", "empty"):
        assert "The files of MNIST are not on this machine" in errors
    else:
        assert "The files of MNIST were found but cannot be read" in errors and library_message in errors
        assert len(at.error) == 1  # one clear message, not one per section of the page
    assert at.button(key="train_button").disabled
    _open(at, "pages/2_Unlearn.py")
    at.multiselect(key="unlearn_methods").set_value(["finetune"]).run()
    at.button(key="run_button").click().run()
    _no_traceback(at)
    if case in ("missing", "empty"):
        assert "not on this machine, so nothing was started" in _texts(at.error)
        assert "experiment_job" not in at.session_state
    else:  # the files exist, so the run starts and fails at once, saying which file is damaged
        job = _finish(at, "experiment_job", 60)
        assert job.state == jobs.FAILED and "A data file is damaged" in job.error and library_message in job.error
        assert "A data file is damaged" in _texts(at.error)
        assert RunStore().list_runs() == []
    assert _no_network == []  # the app never tried the network


# =========================================================================== planted pickles


class _Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_in_the_model_cache_is_rebuilt_never_executed(tmp_path):
    at = _app("pages/1_Setup.py")
    at.button(key="train_button").click().run()
    first = _finish(at, "models_job")
    assert first.state == jobs.DONE, first.error
    cache = training.ModelCache()
    entries = sorted(cache.root.glob("*.safetensors"))
    assert len(entries) == 2  # the original and Retrain
    marker = tmp_path / "pwned"
    for weights in entries:
        weights.write_bytes(pickle.dumps({"head.weight": _Evil(marker)}))
    at.button(key="train_button").click().run()
    second = _finish(at, "models_job")
    assert second.state == jobs.DONE, second.error
    assert not marker.exists()
    messages = [m for _, _, m in second.progress.messages()]
    assert sum("unusable" in m and "rebuilt" in m for m in messages) == 2
    page = _texts(at.markdown)
    assert page.count("trained (") == 2 and "loaded from the cache" not in page
    assert second.result["original"]["test_acc"] == pytest.approx(first.result["original"]["test_acc"])


def test_a_pickle_in_a_stored_run_is_a_message_never_executed(tmp_path):
    store = RunStore()
    run_id = store.begin({"dataset": "digits", "forget": "class:3", "seed": 0})
    store.commit(run_id, {"methods": {"retrain": {"metrics": {"test_r": 99.0}, "status": "done"}}},
                 tensors={"w": __import__("torch").zeros(2)})
    marker = tmp_path / "pwned"
    (store.runs_dir / run_id / "tensors.safetensors").write_bytes(pickle.dumps({"w": _Evil(marker)}))
    at = _app()
    for page in ANALYSIS_PAGES:
        _open(at, page)
        _no_traceback(at)
        assert f"Run {run_id} cannot be read" in _texts(at.error), page
    assert not marker.exists()


# =========================================================================== old run stores


def test_a_version0_store_is_migrated_and_its_run_is_shown(tmp_path, monkeypatch):
    home = tmp_path / "old_home"
    _version0_store(home / "store")
    monkeypatch.setenv("MIXUNLEARN_HOME", str(home))
    at = _app("pages/3_Compare.py")
    _no_traceback(at)
    assert not at.error, _texts(at.error)
    table = at.dataframe[0].value
    assert list(table["method"])[:3] == ["Retrain", "FT", "gone_method"]  # an unregistered method: its name
    assert table.loc[table["method"] == "FT", "Test_r"].iloc[0] == 97.5


def test_a_store_that_cannot_be_migrated_is_a_message_everywhere(tmp_path, monkeypatch):
    home = tmp_path / "old_home"
    _version0_store(home / "store", with_config=False)
    monkeypatch.setenv("MIXUNLEARN_HOME", str(home))
    at = _app()
    for page in ANALYSIS_PAGES:
        _open(at, page)
        _no_traceback(at)
        assert "cannot be migrated" in _texts(at.error) and "MIXUNLEARN_HOME" in _texts(at.error), page
    at = _app()
    at.button(key="demo_button").click().run()
    _no_traceback(at)
    assert "cannot be migrated" in _texts(at.error)
    assert "experiment_job" not in at.session_state


# =========================================================================== cancel, then run again at once


def test_after_a_cancel_the_next_run_starts_at_once_and_completes():
    at = _app("pages/2_Unlearn.py")
    at.multiselect(key="unlearn_methods").set_value(["finetune"]).run()
    at.button(key="run_button").click().run()
    job = _job(at, "experiment_job")
    deadline = time.time() + 60
    while not job.progress.latest():  # cancel once the job has reported something
        assert time.time() < deadline
        time.sleep(0.05)
    at.run()
    at.button(key=f"cancel-{job.id}").click().run()
    _no_traceback(at)
    assert job.wait(60) and job.state == jobs.CANCELLED
    at.run()
    assert "cancelled" in _texts(at.warning)
    at.button(key="run_button").click().run()  # at once: no "still in progress" warning
    assert "still in progress" not in _texts(at.warning)
    again = _finish(at, "experiment_job")
    assert again.id != job.id and again.state == jobs.DONE, again.error
    assert [r.id for r in RunStore().list_runs()] == [again.result["run_id"]]
    assert [r.status for r in RunStore().list_runs(None)] == ["complete", "cancelled"]


def test_once_the_run_is_saved_cancel_is_no_longer_offered(monkeypatch):
    from mixunlearn import analysis

    inside, release = threading.Event(), threading.Event()
    real = analysis.project

    def slow_projection(*args, **kwargs):  # the job is past saving the run, projecting embeddings
        inside.set()
        release.wait(60)
        return real(*args, **kwargs)

    monkeypatch.setattr(analysis, "project", slow_projection)
    at = _app("pages/2_Unlearn.py")
    at.multiselect(key="unlearn_methods").set_value(["finetune"]).run()
    at.button(key="run_button").click().run()
    job = _job(at, "experiment_job")
    try:
        assert inside.wait(120), job.error
        at.run()
        _no_traceback(at)
        assert f"cancel-{job.id}" not in {b.key for b in at.button}
        assert "can no longer be cancelled" in _texts(at.caption)
        assert job.cancel() is False  # a click that raced the page is refused: the run is saved
    finally:
        release.set()
    job = _finish(at, "experiment_job")
    assert job.state == jobs.DONE and [r.id for r in RunStore().list_runs()] == [job.result["run_id"]]


# =========================================================================== two sessions at once


def _session(setup: dict) -> AppTest:
    at = _app("pages/2_Unlearn.py", setup=setup)
    at.multiselect(key="unlearn_methods").set_value(["finetune"]).run()
    return at


def test_two_sessions_run_at_once_on_the_cpu_with_separate_results():
    a = _session({"classes": [3], "seed": 0, "device": "cpu"})
    b = _session({"classes": [5], "seed": 1, "device": "cpu"})
    a.button(key="run_button").click().run()
    b.button(key="run_button").click().run()
    ja, jb = _job(a, "experiment_job"), _job(b, "experiment_job")
    assert ja.id != jb.id and not ja.gpu and not jb.gpu
    # CPU jobs never wait for each other: both are running before either finishes.
    deadline = time.time() + 60
    while not (ja.started and jb.started):
        assert time.time() < deadline
        time.sleep(0.02)
    assert jb.started < (ja.finished or float("inf")) and ja.started < (jb.finished or float("inf"))
    ja, jb = _finish(a, "experiment_job"), _finish(b, "experiment_job")
    assert (ja.state, jb.state) == (jobs.DONE, jobs.DONE), (ja.error, jb.error)
    runs = {}
    for at, forget, seed in ((a, "class:3", 0), (b, "class:5", 1)):
        run_id = at.session_state["run_id"]
        row = RunStore().get(run_id)
        assert (row.forget, row.seed, row.status) == (forget, seed, "complete")
        runs[forget] = run_id
        _open(at, "pages/3_Compare.py")  # each session is shown its own run
        assert f"{forget} · seed {seed}" in _texts(at.markdown)
    assert runs["class:3"] != runs["class:5"]


def test_on_a_gpu_the_second_session_waits_its_turn_with_a_message(monkeypatch):
    monkeypatch.setattr(jobs, "_is_accelerator", lambda device: True)  # simulate a GPU for every job
    release = threading.Event()
    real = jobs.experiment_job
    gated: list = []

    def gate_first(cfg, **kw):
        fn = real(cfg, **kw)
        if gated:
            return fn

        def held(job):
            release.wait(120)  # the first run keeps the GPU until the test lets it go
            return fn(job)

        gated.append(True)
        return held

    monkeypatch.setattr(jobs, "experiment_job", gate_first)
    a = _session({"classes": [3], "seed": 0})
    b = _session({"classes": [5], "seed": 1})
    try:
        a.button(key="run_button").click().run()
        ja = _job(a, "experiment_job")
        deadline = time.time() + 30
        while ja.state != jobs.RUNNING:
            assert time.time() < deadline
            time.sleep(0.02)
        b.button(key="run_button").click().run()
        jb = _job(b, "experiment_job")
        assert ja.gpu and jb.gpu
        # Wait for the state the check needs (the job's thread saying so), not a fixed sleep that a
        # loaded machine can outrun.
        deadline = time.time() + 30
        while "waiting for the GPU" not in (jb.message or ""):
            assert time.time() < deadline, jb.message
            time.sleep(0.02)
        b.run()
        _no_traceback(b)
        assert jb.state == jobs.QUEUED
        assert "waiting for the GPU" in _texts(b.info)
    finally:
        release.set()
    ja, jb = _finish(a, "experiment_job"), _finish(b, "experiment_job")
    assert (ja.state, jb.state) == (jobs.DONE, jobs.DONE), (ja.error, jb.error)
    assert jb.started >= ja.finished  # one at a time on the GPU
    assert get_runner().gpu_queue.holder is None
    assert a.session_state["run_id"] != b.session_state["run_id"]


def test_a_run_stored_from_the_command_line_is_shown_without_error(capsys):
    from mixunlearn.cli import main

    assert main(["run", "--methods", "retrain,finetune", "--param", "finetune.epochs=1", "--no-attacks",
                 "--quiet", "--store", "--out", str(Path(os.environ["MIXUNLEARN_HOME"]) / "out")]) == 0
    capsys.readouterr()
    at = _app()
    for page in ANALYSIS_PAGES:
        _open(at, page)
        _no_traceback(at)
        assert not at.error, (page, _texts(at.error))
    for page in ("pages/4_Embeddings.py", "pages/5_Loss_KDE.py"):
        _open(at, page)
        assert "stored with its metrics only" in _texts(at.info), page
    _open(at, "pages/3_Compare.py")
    assert list(at.dataframe[0].value["method"])[:2] == ["Retrain", "FT"]
    assert at.get("download_button")  # the download is built from results.json alone
