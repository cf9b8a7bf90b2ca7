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


def test_unlearn_page_offers_tuned_settings_and_the_study_history(tmp_path, monkeypatch):
    best = publish_synthetic()
    assert best["params"] == {"lr": 0.05} and best["gap"] == 1.5 and best["shipped_gap"] == 3.0
    publish_synthetic(method="neggrad")
    # results that ship with the package (best settings, no study): SalUn's is offered, FT's is
    # replaced by the study published above
    monkeypatch.setattr(tune, "BUNDLED_DIR", tmp_path / "bundle")
    shipped = {"dataset": "digits", "recipe": best["recipe"], "level": "class", "forget": "class:0", "seeds": [0, 1],
               "gap": 0.9, "shipped_gap": 1.2, "trials": 20,
               "test": {"seeds": [0, 1, 2], "shipped_gap": 1.1, "tuned_gap": 0.7, "floor": 0.5}}
    tune.write_bundle([{**shipped, "method": "salun", "params": {"lr": 0.004}},
                       {**shipped, "method": "finetune", "params": {"lr": 0.002}}], "digits", best["recipe"], "class")
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.run()
    at.switch_page("pages/2_Unlearn.py")
    at.run()
    at.multiselect(key="unlearn_methods").set_value(["neggrad", "finetune", "salun", "l1_sparse"]).run()
    assert not at.exception, [e.value for e in at.exception]
    radios = {r.key: r for r in at.radio}
    assert {"tuned:finetune", "tuned:neggrad", "tuned:salun"} <= set(radios)
    assert "tuned:l1_sparse" not in radios  # where a result exists
    # the studies tuned class 0; the default task forgets class 3: the caption says so
    captions = " ".join(c.value for c in at.caption)
    assert "class:0): validation gap" in captions and "This task forgets class:3: the tuned values" in captions
    # the shipped result is named as the project's own, once: FT's is the published study's
    assert captions.count("Tuned by MixUnlearn's own sweep over 20 trials") == 1
    assert "On the test split (seeds [0, 1, 2]): gap 0.70 tuned vs 1.10 shipped; an independent Retrain scores 0.50" \
        in captions
    # the study view opens on the first chosen method with a study, not the first alphabetically
    assert at.selectbox(key="tuned_study_method").value == "neggrad"
    assert at.number_input(key="hp:finetune:digits:lr").value != 0.05
    radios["tuned:finetune"].set_value("tuned").run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.number_input(key="hp:tuned:finetune:digits:lr").value == 0.05
    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    titles = " ".join(str(c.get("layout", {}).get("title", {}).get("text", "")) for c in charts)
    assert "Optimization History" in titles
    # a shipped result has no study to show: the view says how to make one
    at.selectbox(key="tuned_study_method").set_value("salun").run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("ships this method's best settings" in c.value and "--method salun" in c.value for c in at.caption)
