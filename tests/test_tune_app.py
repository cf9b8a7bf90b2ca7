"""The app's tuned settings: a published tuning result (a small synthetic study, no training) makes
the Unlearn page offer "shipped / tuned" for its method, prefill the tuned values, and show the
study's history with Optuna's own figure."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
from streamlit.testing.v1 import AppTest

from mixunlearn import tune

ROOT = Path(__file__).resolve().parents[1]


def publish_synthetic(lrs=(0.01, 0.05, 0.002), gaps=(3.0, 1.5, 2.5), method: str = "finetune") -> dict:
    task = tune.TuneTask(dataset="digits", forget="class:0", method=method, seeds=(0,)).resolved()
    folder = tune.tuned_folder("digits", task.recipe, "class")
    folder.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(study_name=task.study_name, storage=f"sqlite:///{folder / f'{method}.db'}")
    study.set_user_attr("task", task.to_dict())
    dist = {"lr": optuna.distributions.FloatDistribution(1e-3, 0.1, log=True)}
    for i, (lr, gap) in enumerate(zip(lrs, gaps)):
        study.add_trial(optuna.trial.create_trial(params={"lr": lr}, distributions=dist, value=gap,
                                                  user_attrs={"shipped": i == 0, "time_ratio": 0.1}))
    best = tune.summary(study)
    (folder / f"{method}.json").write_text(json.dumps(best))
    return best


def test_unlearn_page_offers_tuned_settings_and_the_study_history():
    best = publish_synthetic()
    assert best["params"] == {"lr": 0.05} and best["gap"] == 1.5 and best["shipped_gap"] == 3.0
    publish_synthetic(method="neggrad")
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.run()
    at.switch_page("pages/2_Unlearn.py")
    at.run()
    at.multiselect(key="unlearn_methods").set_value(["neggrad", "finetune", "salun"]).run()
    assert not at.exception, [e.value for e in at.exception]
    radios = {r.key: r for r in at.radio}
    assert {"tuned:finetune", "tuned:neggrad"} <= set(radios) and "tuned:salun" not in radios  # where published
    # the studies tuned class 0; the default task forgets class 3: the caption says so
    captions = " ".join(c.value for c in at.caption)
    assert "class:0): validation gap" in captions and "This task forgets class:3: the tuned values" in captions
    # the study view opens on the first chosen method with a study, not the first alphabetically
    assert at.selectbox(key="tuned_study_method").value == "neggrad"
    assert at.number_input(key="hp:finetune:digits:lr").value != 0.05
    radios["tuned:finetune"].set_value("tuned").run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.number_input(key="hp:tuned:finetune:digits:lr").value == 0.05
    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    titles = " ".join(str(c.get("layout", {}).get("title", {}).get("text", "")) for c in charts)
    assert "Optimization History" in titles
