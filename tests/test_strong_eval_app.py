"""The Strong evaluation page through AppTest on a tiny pool (N = 3, one training epoch): the time
estimate before starting, bad input as a message with nothing started, a run in the background to
its results (scores, ε histogram, least-forgotten examples and one example's confidences, relearn
and probe, definitions one click away), and a reloaded tab (a new session with the URL's token)
finding a running evaluation and cancelling it."""

from __future__ import annotations

import time

from test_app import _app, _charts, _open, _texts, _wait

from mixunlearn import jobs
from mixunlearn.jobs import get_runner

PAGE = "pages/8_Strong_evaluation.py"


def _frame(at, column: str):
    return next(d.value for d in at.dataframe if column in d.value.columns)


def _tiny(at, pool: int = 3, methods=("retrain", "finetune")) -> None:
    at.multiselect(key="se_methods").set_value(list(methods))
    at.number_input(key="se_epochs").set_value(1)
    at.number_input(key="se_depth_models").set_value(1)
    at.number_input(key="se_cap").set_value(30)
    at.number_input(key="se_pool").set_value(pool).run()
    assert not at.exception, [e.value for e in at.exception]


def test_the_page_estimates_refuses_bad_input_runs_and_shows_the_results():
    at = _open(_app(), PAGE)
    assert "Strong evaluation" in _texts(at.title)
    assert at.multiselect(key="se_methods").value == ["retrain", "finetune", "mixunlearn"]
    assert "Estimated time" in _texts(at.info)
    # bad input: a clear message, nothing started, no traceback
    at.number_input(key="se_pool").set_value(2).run()
    assert not at.exception
    assert "pool size 2 is out of range; allowed 3..512" in _texts(at.error)
    at.button(key="se_start").click().run()
    assert not at.exception and "Nothing was started" in _texts(at.error) and "strong_eval_job" not in at.session_state
    at.multiselect(key="se_methods").set_value([]).run()
    assert "Pick at least one method" in _texts(at.error)

    _tiny(at)
    info = _texts(at.info)
    assert "Estimated time" in info and "6 retrained models to train (0 in the cache already)" in info
    at.button(key="se_start").click().run()
    assert not at.exception, [e.value for e in at.exception]
    job = _wait(at, "strong_eval_job", 240)
    assert job.state == jobs.DONE, job.error
    assert at.query_params["eval"] == [job.token] or at.query_params["eval"] == job.token
    latest = job.progress.latest()
    assert latest["overall"]["step"] == latest["overall"]["total"] == 9  # 3 pools of 3 models
    assert {"reference pool", "training", "finetune pool"} <= set(latest)
    at.run()
    assert not at.exception, [e.value for e in at.exception]

    scores = _frame(at, "forget quality")
    assert list(scores["method"]) == ["Retrain (other seeds)", "FT"]
    assert scores["score"].between(0, 1.5).all() and scores["mean ε"].between(0, 50).all()
    depth = _frame(at, "relearn steps")
    assert list(depth["model"]) == ["Retrain (reference pool)", "Retrain (other seeds)", "FT"]
    charts = _charts(at)
    hist = charts[0]
    n_forget = job.result["doc"]["info"]["n_forget"]
    assert len(hist["data"]) == 2 and all(sum(t["y"]) == n_forget for t in hist["data"])  # every example once
    assert any(t.get("type") == "heatmap" or t.get("type") == "image" for t in charts[1]["data"])  # the images
    conf = charts[2]
    assert [t["name"] for t in conf["data"] if t["type"] == "histogram"] == ["retrained (reference pool) (N = 3)",
                                                                               "FT (N = 3)"]
    # the least-forgotten first: the examples are ordered by ε
    doc = job.result["doc"]
    order = job.result["examples"]["least_forgotten"]["finetune"]
    eps = doc["methods"]["finetune"]["eps_per_example"]
    assert [eps[j] for j in order] == sorted((eps[j] for j in order), reverse=True)
    assert max(eps) == eps[order[0]]
    # another example: its own confidences
    first = [t["x"] for t in conf["data"] if t["type"] == "histogram"]
    at.selectbox(key="se_example:finetune").set_value(1).run()
    second = [t["x"] for t in _charts(at)[2]["data"] if t["type"] == "histogram"]
    assert not at.exception and first != second
    # definitions one click away: the sections of docs/metrics.md
    pops = [p.proto.popover.label for p in at.get("popover")]
    assert {"Score, ε and forget quality", "U-LiRA", "Relearn time", "Linear probe"} <= set(pops)
    md = _texts(at.markdown)
    assert "Zero-spread rule" in md and "leave-one-out" in md and "relearn_steps" in md
    assert at.get("download_button")

    # the cached pools are reused: the estimate now counts nothing to train
    at.number_input(key="se_pool").set_value(3).run()
    assert "0 retrained models to train (6 in the cache already)" in _texts(at.info)


def test_a_reloaded_tab_finds_the_running_evaluation_and_can_cancel_it():
    at = _open(_app(), PAGE)
    _tiny(at, pool=4, methods=("retrain", "mixunlearn"))
    at.button(key="se_start").click().run()
    job = get_runner().get(at.session_state["strong_eval_job"])
    token = at.query_params["eval"]
    token = token[0] if isinstance(token, list) else token
    assert token == job.token
    # a reload is a new session whose URL holds the token
    other = _app()
    other.query_params["eval"] = token
    other.switch_page(PAGE).run()
    assert not other.exception, [e.value for e in other.exception]
    assert other.session_state["strong_eval_job"] == job.id
    assert other.button(key="se_start").disabled
    assert "Strong evaluation (N = 4)" in _texts(other.info)
    deadline = time.time() + 60
    while job.view(with_history=False).state == jobs.QUEUED:
        assert time.time() < deadline
        time.sleep(0.1)
    other.run()
    other.button(key=f"cancel-{job.id}").click().run()
    assert not other.exception
    assert job.wait(120) and job.state == jobs.CANCELLED
    other.run()
    assert "cancelled" in _texts(other.warning) and not other.button(key="se_start").disabled
    # an unknown token (e.g. from before a restart) is dropped, not an error
    third = _app()
    third.query_params["eval"] = "nope"
    third.switch_page(PAGE).run()
    assert not third.exception and "strong_eval_job" not in third.session_state
    assert "No evaluation started" in _texts(third.caption)
