"""The generator playground on the Generator page through AppTest: it runs on digits and shows masks
and metrics (ASR filled in after the accuracies), a second run with another setting shows both side
by side, a bad value is a clear message with nothing started, cancelling leaves the page usable,
and a task whose models are not cached says so instead of training them."""

from __future__ import annotations

import time

import pytest
from test_app import _app, _charts, _open, _synthetic_run, _texts, _wait, shared_models  # noqa: F401 - the fixture

from mixunlearn import jobs
from mixunlearn import playground as pg
from mixunlearn.estimate import format_seconds
from mixunlearn.experiment import ExperimentConfig
from mixunlearn.jobs import get_runner

PAGE = "pages/6_Generator.py"
PAGE_CHARTS = 4  # the page's own: grid, health curves, debug views, training curves


@pytest.fixture(autouse=True)
def _fresh_contexts():
    pg.clear_contexts()
    yield
    pg.clear_contexts()


def _stored_run(cache) -> str:
    from mixunlearn.store import RunStore

    cfg = ExperimentConfig(dataset="digits", forget="class:3", methods=("retrain", "mixunlearn"), seed=0,
                           device="cpu")
    job = get_runner().submit(jobs.experiment_job(cfg, store=RunStore(), cache=cache, project=None))
    assert job.wait(300) and job.state == jobs.DONE, job.error
    return job.result["run_id"]


def _run_playground(at, key: str):
    at.button(key=f"{key}:run").click().run()
    assert not at.exception, [e.value for e in at.exception]
    job = _wait(at, "playground_job", 120)
    assert job.state == jobs.DONE, job.error
    at.run()
    attack = _wait(at, "playground_attack_job", 60)
    assert attack.state == jobs.DONE, attack.error
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return job


def _grids(at) -> list[dict]:
    """The playground's mask grids (left, right): the figures after the page's own with the grid's columns."""
    return [c for c in _charts(at)[PAGE_CHARTS:]
            if c["layout"].get("annotations") and c["layout"]["annotations"][0]["text"] == "x_f"]


def _table(at):
    return next(d.value for d in at.dataframe if "gap (accuracies)" in d.value.columns)


def test_the_playground_runs_compares_refuses_bad_values_and_survives_a_cancel(request):
    run_id = _stored_run(request.getfixturevalue("shared_models"))
    key = f"pg:{run_id}:mixunlearn"
    at = _open(_app(), PAGE)
    assert "Playground" in _texts(at.subheader)
    assert at.selectbox(key=f"{key}:share_constraint").value == "project"  # the run's own settings
    assert at.number_input(key=f"{key}:lr_generator").value == pytest.approx(3e-2)
    assert "No playground result" in _texts(at.caption)

    # 1. one run: masks beside the run's own, accuracies, then ASR and the full gap.
    _run_playground(at, key)
    charts = _charts(at)
    assert len(charts) == PAGE_CHARTS + 4  # per side: the mask grid and the health curves
    grids = _grids(at)
    assert len(grids) == 2 and all("λ = 0.5" in g["layout"]["title"]["text"] for g in grids)
    masks = [[t for t in g["data"] if t.get("name") == "mask"] for g in grids]
    assert all(len(m) == 4 for m in masks)
    labels = [m.label for m in at.metric]
    assert labels.count("Test_r") >= 2 and labels.count("ASR") >= 2 and "gap to Retrain" in labels
    assert "…" not in [m.value for m in at.metric]  # the attack was filled in
    table = _table(at)
    assert list(table["#"]) == [0, 1]
    # With the run's own settings the playground reproduces the run (same seed, pairs and λs).
    assert table["Test_r"].iloc[0] == pytest.approx(table["Test_r"].iloc[1])
    assert table["share error"].iloc[1] < 1e-4

    # 2. another setting: both results side by side, the newest on the right.
    at.selectbox(key=f"{key}:share_constraint").set_value("none").run()
    _run_playground(at, key)
    assert at.selectbox(key=f"{key}:left").value == 1 and at.selectbox(key=f"{key}:right").value == 2
    table = _table(at)
    assert list(table["#"]) == [0, 1, 2]
    assert table["share error"].iloc[2] > 0.1 > table["share error"].iloc[1]
    assert "share_constraint=none" in table["settings"].iloc[2]
    left_masks, right_masks = ([t["z"] for t in g["data"] if t.get("name") == "mask"] for g in _grids(at))
    assert left_masks != right_masks  # #1 (project) and #2 (none) side by side
    at.selectbox(key=f"{key}:left").set_value(0).run()  # step back: the run's own on the left
    assert not at.exception and len(_charts(at)) == PAGE_CHARTS + 4

    # 3. a bad value: a clear message, nothing started, no exception.
    before = at.session_state["playground_job"]
    at.number_input(key=f"{key}:lr_generator").set_value(5.0).run()
    at.button(key=f"{key}:run").click().run()
    assert not at.exception
    errors = _texts(at.error)
    assert "Nothing was started" in errors and "lr_generator" in errors and "maximum" in errors
    assert at.session_state["playground_job"] == before

    # 4. cancel a long run (many warm-up updates): the page stays usable, the results stay.
    at.number_input(key=f"{key}:lr_generator").set_value(3e-2)
    at.number_input(key=f"{key}:gen_warmup").set_value(1000).run()
    at.button(key=f"{key}:run").click().run()
    job = get_runner().get(at.session_state["playground_job"])
    assert job.id != before
    deadline = time.time() + 60
    while not any(ev["phase"] == "unlearn" or "warm-up" in ev["message"] for ev in job.progress.latest().values()):
        assert time.time() < deadline and not job.view(with_history=False).final, job.message
        time.sleep(0.1)
    at.run()
    at.button(key=f"cancel-{job.id}").click().run()
    assert not at.exception
    assert job.wait(60) and job.state == jobs.CANCELLED
    at.run()
    assert not at.exception
    assert "cancelled" in _texts(at.warning)
    assert not at.button(key=f"{key}:run").disabled
    assert list(_table(at)["#"]) == [0, 1, 2]
    at.number_input(key=f"{key}:gen_warmup").set_value(0).run()
    _run_playground(at, key)  # and it runs again
    assert list(_table(at)["#"]) == [0, 1, 2, 3]


def test_save_as_a_run_adds_a_complete_run(request):
    from mixunlearn.store import RunStore

    run_id = _stored_run(request.getfixturevalue("shared_models"))
    key = f"pg:{run_id}:mixunlearn"
    at = _open(_app(), PAGE)
    at.selectbox(key=f"{key}:gen_init").set_value("normal").run()
    _run_playground(at, key)
    at.button(key=f"{key}:save").click().run()
    assert not at.exception and not at.error
    assert "Saved as run" in _texts(at.success)
    runs = RunStore().list_runs("complete")
    assert len(runs) == 2 and runs[0].label.startswith("playground #1: gen_init=normal")
    assert runs[0].config["params"]["mixunlearn"]["gen_init"] == "normal"


def test_models_missing_from_the_cache_are_said_not_trained():
    from mixunlearn.store import RunStore

    run_id = _synthetic_run(RunStore())  # digits class 3 seed 0, but this test's model cache is empty
    at = _open(_app(), PAGE)
    key = f"pg:{run_id}:mixunlearn"
    at.button(key=f"{key}:run").click().run()
    job = _wait(at, "playground_job", 120)
    assert job.state == jobs.DONE
    at.run()
    assert not at.exception
    assert "not in the model cache" in _texts(at.warning)
    assert at.checkbox(key=f"{key}:train").value is False
    assert "No playground result" in _texts(at.caption)


def test_off_digits_the_panel_gives_a_time_estimate_before_the_run():
    from mixunlearn.store import RunStore

    run_id = _synthetic_run(RunStore(), config={"dataset": "fashion_mnist", "forget": "class:0", "seed": 0})
    at = _open(_app(), PAGE)
    info = _texts(at.info)
    assert "rough estimate" in info and "Fashion" in info
    est = pg.estimate_seconds(ExperimentConfig(dataset="fashion_mnist", forget="class:0", methods=("mixunlearn",)))
    # the fast recipe's budget: 1 epoch over 6,000 forget images
    assert f"about {format_seconds(est)} of compute" in info
    # A bigger budget gives a longer estimate, before anything runs.
    at.number_input(key=f"pg:{run_id}:mixunlearn:gen_warmup").set_value(1000).run()
    assert _texts(at.info) != info and "playground_job" not in at.session_state
