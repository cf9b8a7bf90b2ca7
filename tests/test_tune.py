"""``tune`` (mixunlearn.tune): search spaces, trial 0 = shipped, resume, failed trials, the validation
split only, and ``--params-from`` for run/bench (``tune --ray`` on a real local cluster is in
tests/test_ray.py, on its cluster). Digits, a fast recipe and finetune with one epoch keep every
trial to a few seconds."""

from __future__ import annotations

import copy
import dataclasses
import json
import time

import optuna
import pytest
import torch

from mixunlearn.cli import main
from mixunlearn.methods import list_methods, make_config
from mixunlearn.tune import TuneTask, run_tuning, search_space, shipped_params, suggest

# finetune with one epoch at batch 256: about a second a trial on digits.
CHEAP = "finetune"
TIME_CAP = 100.0  # the tests check the mechanics, not the speed (bench/ does)


@pytest.fixture(scope="module")
def shared_home(tmp_path_factory):
    return tmp_path_factory.mktemp("tune_home")


@pytest.fixture
def home(shared_home, monkeypatch):
    """One model cache for this module's tests: the digits originals and Retrains train once."""
    monkeypatch.setenv("MIXUNLEARN_HOME", str(shared_home))
    return shared_home


def task(**kw) -> TuneTask:
    base = {"dataset": "digits", "forget": "class:0", "method": CHEAP, "seeds": (0,), "recipe": "laf_cnn_fast",
            "max_time_ratio": TIME_CAP}
    return TuneTask(**{**base, **kw})


def narrow_finetune(monkeypatch):
    """finetune's space with its budget pinned to one epoch (fast trials; the other fields searched)."""
    from mixunlearn.methods import base

    spec = base.get_method("finetune")
    cls = spec.config_cls
    fields = {f.name: f for f in dataclasses.fields(cls)}
    meta = dict(fields["epochs"].metadata, tune=False)
    monkeypatch.setattr(fields["epochs"], "metadata", meta)
    monkeypatch.setitem(cls.FAMILY_DEFAULTS, "digits", {"epochs": 1, "batch_size": 256})


def test_every_method_space_samples_valid_configs():
    families = ("digits", "cnn:fast")
    for spec in list_methods():
        if spec.name == "retrain":
            continue
        for family in families:
            dims = search_space(spec.name, family)
            assert dims, f"{spec.name} has nothing to tune"
            # the shipped values lie in the space (trial 0 is them)
            make_config(spec.name, family, shipped_params(dims))
            study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
            for _ in range(20):
                trial = study.ask()
                params = suggest(trial, dims)
                make_config(spec.name, family, params)  # raises on any value out of its field's range
                study.tell(trial, 0.0)
    # opt-outs and narrowed ranges are honoured
    mix = {d.name: d for d in search_space("mixunlearn", "cnn:fast")}
    assert "label_mode" not in mix and "amp" not in mix and "lr" in mix and mix["lr"].log
    beta = {d.name: d for d in search_space("neggrad_plus", "cnn")}["beta"]
    assert (beta.low, beta.high) == (0.9, 0.99999)


def test_trial0_is_shipped_and_the_study_resumes_to_the_total(home, tmp_path, monkeypatch):
    narrow_finetune(monkeypatch)
    out = tmp_path / "study"
    first = run_tuning(task(), 1, out, write=lambda s: None)
    assert first.ran == 1 and first.best["trials"] == 1
    again = run_tuning(task(), 2, out, write=lambda s: None)  # --trials is the total
    assert again.ran == 1
    study = optuna.load_study(study_name=task().resolved().study_name, storage=f"sqlite:///{out / 'study.db'}")
    trials = study.get_trials()
    assert len(trials) == 2
    shipped = shipped_params(search_space(CHEAP, "digits"))
    assert trials[0].params == shipped and trials[0].user_attrs["shipped"]
    assert not trials[1].user_attrs.get("shipped") and trials[1].params != shipped
    assert run_tuning(task(), 2, out, write=lambda s: None).ran == 0
    # A resumed process draws new points (not the first process's random draws again).
    assert run_tuning(task(), 3, out, write=lambda s: None).ran == 1
    trials = study.get_trials()
    assert trials[2].params != trials[1].params
    best = json.loads((out / "best.json").read_text())
    assert best["trials"] == 3 and best["failed"] == 0 and best["gap"] <= trials[0].value
    assert best["shipped_gap"] == trials[0].value and best["eval_split"] == "val"
    assert best["trial_time_ratio_mean"] > 0 and all("time_ratio" in t.user_attrs for t in trials)
    # a trial's whole cost (method + scoring on every seed) is at least its method's
    assert best["trial_wall_ratio_mean"] >= best["trial_time_ratio_mean"]
    assert trials[0].system_attrs  # the time constraint is stored with each trial


def test_a_failing_trial_is_recorded_failed_and_the_study_goes_on(home, tmp_path, monkeypatch):
    from mixunlearn.methods import base

    narrow_finetune(monkeypatch)
    spec = base.get_method("finetune")

    def overflow(model, data, cfg, *, device, callbacks):
        with torch.no_grad():
            # 3e38 x 10 overflows float32 to inf on every CPU: run_method's weight check fails
            next(model.parameters()).fill_(3e38).mul_(10.0)
        return model

    def boom(model, data, cfg, *, device, callbacks):
        raise RuntimeError("a bad combination")

    monkeypatch.setitem(base._REGISTRY, "finetune", dataclasses.replace(spec, fn=overflow))
    res = run_tuning(task(), 1, tmp_path / "s", write=lambda s: None)
    monkeypatch.setitem(base._REGISTRY, "finetune", dataclasses.replace(spec, fn=boom))
    res = run_tuning(task(), 2, tmp_path / "s", write=lambda s: None)
    assert res.best["failed"] == 2 and res.best["trials"] == 0 and res.best["gap"] is None
    study = optuna.load_study(study_name=task().resolved().study_name,
                              storage=f"sqlite:///{tmp_path / 's' / 'study.db'}")
    errors = [t.user_attrs["error"] for t in study.get_trials()]
    # (a method function from outside the package is checked as a plugin's: PluginMethodError is a
    # NonFiniteLossError that names the file)
    assert ("NonFiniteLossError" in errors[0] or "NaN or infinite" in errors[0]) and "a bad combination" in errors[1]
    assert all(t.state == optuna.trial.TrialState.FAIL for t in study.get_trials())


class _Poison:
    """A test split that fails on any use."""

    def __getattr__(self, name):
        raise AssertionError("the test split was used during tuning")

    def __len__(self):
        raise AssertionError("the test split was used during tuning")

    def __getitem__(self, item):
        raise AssertionError("the test split was used during tuning")


def test_the_test_split_is_never_scored(home, tmp_path, monkeypatch):
    from mixunlearn import experiment
    from mixunlearn.datahash import dataset_hash
    from mixunlearn.datasets import load_dataset

    narrow_finetune(monkeypatch)
    digits = load_dataset("digits")
    dataset_hash(digits)  # the data's fingerprint hashes the test tensors once per load (not a score); kept
    poisoned = copy.copy(digits)  # (the copy shares the extras that keep it)
    poisoned.x_test, poisoned.y_test = _Poison(), _Poison()
    monkeypatch.setattr(experiment, "load_dataset", lambda *a, **k: poisoned)
    res = run_tuning(task(), 1, tmp_path / "s", write=lambda s: None)
    assert res.best["trials"] == 1 and res.best["gap"] is not None
    # The poison bites where the test split is used: the same task's data on the test split.
    with pytest.raises(AssertionError, match="test split"):
        experiment.prepare_data(dataclasses.replace(task().experiment(0), eval_split="test"), torch.device("cpu"))


def test_params_from_applies_and_refuses(home, tmp_path, capsys):
    good = tmp_path / "best.json"
    good.write_text(json.dumps({"method": "finetune", "dataset": "digits", "forget": "class:0",
                                "recipe": "laf_cnn_fast", "params": {"lr": 0.003, "epochs": 1}}))
    run = ["run", "--dataset", "digits", "--forget", "class:0", "--recipe", "laf_cnn_fast", "--no-attacks",
           "--quiet"]
    out = tmp_path / "run"
    assert main([*run, "--methods", "retrain,finetune", "--params-from", str(good), "--out", str(out)]) == 0
    cfg = json.loads((out / "results.json").read_text())["methods"]["finetune"]["config"]
    assert cfg["lr"] == 0.003 and cfg["epochs"] == 1
    capsys.readouterr()

    def refused(path, methods="retrain,finetune") -> str:
        rc = main([*run, "--methods", methods, "--params-from", str(path), "--out", str(tmp_path / "no")])
        err = capsys.readouterr().err
        assert rc == 2 and len(err.strip().splitlines()) == 1, err
        return err

    assert "not in the run" in refused(good, "retrain,neggrad")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert "not JSON" in refused(bad)
    bad.write_text(json.dumps({"method": "finetune", "params": {"lrr": 1}}))
    assert "unknown parameter 'lrr'" in refused(bad)
    bad.write_text(json.dumps({"method": "finetune", "params": {"lr": 5.0}}))
    assert "above its maximum" in refused(bad)
    bad.write_text(json.dumps([1, 2]))
    assert "not a tuning result" in refused(bad)
    assert "cannot read" in refused(tmp_path / "missing.json")
    rc = main(["bench", "--dataset", "digits", "--methods", "retrain,neggrad", "--params-from", str(good),
               "--out", str(tmp_path / "b")])
    assert rc == 2 and "not in the run" in capsys.readouterr().err
    assert not (tmp_path / "no").exists() and not (tmp_path / "b").exists()


def test_a_trial_over_the_time_cap_is_stopped_early_and_recorded_infeasible(home, tmp_path, monkeypatch):
    """Trial 0 (shipped) always runs to the end; a later trial stops at the first progress report
    once the method's time passes the cap x Retrain's, and is stored pruned with its constraint."""
    from mixunlearn.methods import base
    from mixunlearn.progress import ProgressEvent, emit

    narrow_finetune(monkeypatch)
    spec = base.get_method("finetune")
    steps: list[int] = []

    def slow(model, data, cfg, *, device, callbacks):
        done = 0
        for i in range(20):
            end = time.process_time() + 0.02
            while time.process_time() < end:  # CPU work: the cap counts the process's CPU seconds on a CPU
                pass
            done += 1
            emit(callbacks, ProgressEvent("finetune", "unlearn", i + 1, 20))
        steps.append(done)
        return model

    monkeypatch.setitem(base._REGISTRY, "finetune", dataclasses.replace(spec, fn=slow))
    tiny = task(max_time_ratio=1e-6)  # any run is over this cap
    res = run_tuning(tiny, 2, tmp_path / "s", write=lambda s: None)
    assert steps == [20]  # the shipped trial ran whole; the next one stopped at once
    study = optuna.load_study(study_name=tiny.resolved().study_name, storage=f"sqlite:///{tmp_path / 's' / 'study.db'}")
    first, second = study.get_trials()
    assert first.state == optuna.trial.TrialState.COMPLETE and first.user_attrs["shipped"]
    assert second.state == optuna.trial.TrialState.PRUNED and second.user_attrs["over_cap"]
    assert second.user_attrs["time_ratio"] > 1e-6 and second.system_attrs  # infeasible, constraint stored
    b = res.best
    assert b["trials"] == 1 and b["stopped_over_cap"] == 1 and b["failed"] == 0 and b["infeasible"] == 2
    assert b["best_is_shipped"] and b["gap"] == first.value
    assert run_tuning(tiny, 2, tmp_path / "s", write=lambda s: None).ran == 0  # a stopped trial counts


def test_evaluate_without_mia_efficacy_keeps_every_other_metric(home):
    from mixunlearn.metrics import evaluate, gap_to_retrain
    from mixunlearn.tune import prepare_seed

    s = prepare_seed(task().resolved(), 0)
    full, lean = evaluate(s.original, s.data, 0), evaluate(s.original, s.data, 0, mia=False)
    assert "mia_efficacy" in full and "mia_efficacy" not in lean
    assert {k: v for k, v in full.items() if k != "mia_efficacy"} == lean
    assert gap_to_retrain(lean, s.retrain_metrics, "class") == gap_to_retrain(full, s.retrain_metrics, "class")


def test_last_k_spaces_stop_at_the_models_layer_count():
    """EU-k / CF-k: every k the space can draw exists in the family's model (a k past the last layer
    is a failed trial, not a point of the space)."""
    from mixunlearn.methods._last_k import layer_units
    from mixunlearn.models import build_model

    for family, model in (("digits", "digits_cnn"), ("cnn", "cnn2"), ("cnn:fast", "cnn2"), ("resnet", "resnet18")):
        layers = len(layer_units(build_model(model)))
        for method in ("eu_k", "cf_k"):
            k = {d.name: d for d in search_space(method, family)}["k"]
            assert 1 <= k.low and k.high == layers, (method, family, k, layers)


def test_what_a_method_chooses_on_validation_is_written_into_best_params(home, tmp_path, monkeypatch):
    """A config's CHOSEN_ON_VALIDATION (SCRUB+R's rewind epoch): the method's choice on each validation
    seed is stored with the trial, and best.json's params carry the lower median over the seeds (so
    ``--params-from`` runs on the test split read nothing to choose it)."""
    from mixunlearn.methods import base

    narrow_finetune(monkeypatch)
    spec = base.get_method("finetune")
    monkeypatch.setattr(spec.config_cls, "CHOSEN_ON_VALIDATION", {"picked": "epochs"}, raising=False)

    def choosing(model, data, cfg, *, device, callbacks):
        return base.MethodOutput(model, {"picked": 3 + data.seed})

    monkeypatch.setitem(base._REGISTRY, "finetune", dataclasses.replace(spec, fn=choosing))
    res = run_tuning(task(seeds=(0, 1)), 1, tmp_path / "s", write=lambda s: None)
    assert res.best["params"]["epochs"] == 3 and res.best["shipped_chosen_on_validation"] == {"epochs": 3}
    study = optuna.load_study(study_name=task(seeds=(0, 1)).resolved().study_name,
                              storage=f"sqlite:///{tmp_path / 's' / 'study.db'}")
    assert [r["chosen"] for r in study.get_trials()[0].user_attrs["per_seed"]] == [{"epochs": 3}, {"epochs": 4}]


def test_on_a_cpu_the_cap_counts_cpu_seconds_not_the_wait_for_a_core(home, tmp_path, monkeypatch):
    """Another process's load stretches a trial's wall time, not its CPU time: a method that spends
    its time waiting (here: sleeping, as a process does while another holds the core) is not over the
    cap, while the same wall time of CPU work is."""
    from mixunlearn.methods import base
    from mixunlearn.progress import ProgressEvent, emit
    from mixunlearn.tune import prepare_seed

    narrow_finetune(monkeypatch)
    spec = base.get_method("finetune")
    t = task().resolved()
    retrain = prepare_seed(t, 0).retrain_seconds  # CPU seconds of a Retrain here
    wait = 0.5 * retrain  # over a cap of 0.3x in wall time

    def waiting(model, data, cfg, *, device, callbacks):
        for i in range(10):
            time.sleep(wait / 10)
            emit(callbacks, ProgressEvent("finetune", "unlearn", i + 1, 10))
        return model

    monkeypatch.setitem(base._REGISTRY, "finetune", dataclasses.replace(spec, fn=waiting))
    res = run_tuning(task(max_time_ratio=0.3), 2, tmp_path / "s", write=lambda s: None)
    assert res.best["stopped_over_cap"] == 0 and res.best["trials"] == 2 and res.best["clocks"] == ["cpu"]
    study = optuna.load_study(study_name=t.study_name, storage=f"sqlite:///{tmp_path / 's' / 'study.db'}")
    for trial in study.get_trials():
        assert trial.user_attrs["time_ratio"] < 0.3 <= trial.user_attrs["per_seed"][0]["wall_seconds"] / retrain


def test_the_bundled_tuning_results_read_and_the_users_own_replace_them(tmp_path, monkeypatch):
    from mixunlearn import tune

    # The results that ship with the package: every one reads as a tuning result (a registered
    # method, params its config accepts), belongs to its file's task and counts its 20 trials.
    files = sorted(tune.BUNDLED_DIR.glob("*.json"))
    assert {f.name for f in files} >= {"fashion_mnist-cnn_fast-class.json", "fashion_mnist-cnn_fast-data.json"}
    for f in files:
        body = json.loads(f.read_text())
        found = tune.bundled(body["dataset"], body["recipe"], body["level"])
        assert len(found) == len(body["results"]) >= 22, f.name  # none skipped as unreadable
        for m, doc in found.items():
            assert doc["bundled"] and doc["method"] == m and doc["level"] == body["level"]
            assert tune.trials_counted(doc) >= 20 and doc["seeds"] == [0, 1] and doc["eval_split"] == "val"
            # the test-split gaps the tables measured ride along (a tuned = shipped row is one row)
            test = doc["test"]
            assert test["seeds"] == [0, 1, 2] and test["floor"] > 0
            assert test["tuned_gap"] == test["shipped_gap"] or not doc["best_is_shipped"]
    assert {"mixunlearn", "mixunlearn_agnostic", "delete", "sfr_on"} <= set(tune.bundled("fashion_mnist", "cnn_fast",
                                                                                         "data"))

    # A bundle of one's own: offered where nothing is published; a published study replaces it.
    monkeypatch.setattr(tune, "BUNDLED_DIR", tmp_path / "bundle")
    monkeypatch.setenv("MIXUNLEARN_HOME", str(tmp_path / "home"))
    doc = {"dataset": "digits", "recipe": "laf_cnn_fast", "level": "class", "forget": "class:0", "seeds": [0],
           "gap": 1.0, "trials": 20}
    tune.write_bundle([{**doc, "method": "salun", "params": {"lr": 0.02}},
                       {**doc, "method": "finetune", "params": {"lr": 0.03}}], "digits", "laf_cnn_fast", "class")
    assert {m: d["params"] for m, d in tune.published("digits", "laf_cnn_fast", "class").items()} == {
        "finetune": {"lr": 0.03}, "salun": {"lr": 0.02}}
    mine = tune.tuned_folder("digits", "laf_cnn_fast", "class")
    mine.mkdir(parents=True)
    (mine / "finetune.json").write_text(json.dumps({**doc, "method": "finetune", "params": {"lr": 0.05}}))
    found = tune.published("digits", "laf_cnn_fast", "class")
    assert found["finetune"]["params"] == {"lr": 0.05} and not found["finetune"].get("bundled")
    assert found["salun"]["bundled"] and tune.published("digits", "laf_cnn_fast", "data") == {}
    # a result for another task is refused; one that no longer reads (a field renamed) is skipped
    with pytest.raises(ValueError, match="salun's result is for"):
        tune.write_bundle([{**doc, "method": "salun", "params": {}, "level": "data"}], "digits", "laf_cnn_fast",
                          "class")
    path = tune.bundled_file("digits", "laf_cnn_fast", "class")
    body = json.loads(path.read_text())
    body["results"][0]["params"] = {"no_such_field": 1}
    path.write_text(json.dumps(body))
    assert set(tune.bundled("digits", "laf_cnn_fast", "class")) == {"salun"}


def test_run_tuned_applies_the_published_results_and_files_and_params_win(tmp_path, monkeypatch, capsys):
    from mixunlearn import cli, tune

    monkeypatch.setattr(tune, "BUNDLED_DIR", tmp_path / "bundle")
    monkeypatch.setenv("MIXUNLEARN_HOME", str(tmp_path / "home"))
    doc = {"dataset": "digits", "recipe": "laf_cnn_fast", "level": "class", "forget": "class:0", "seeds": [0, 1]}
    tune.write_bundle([{**doc, "method": "finetune", "params": {"lr": 0.004, "epochs": 2}},
                       {**doc, "method": "salun", "params": {"lr": 0.002}}], "digits", "laf_cnn_fast", "class")
    base = ["run", "--dataset", "digits", "--forget", "class:3", "--recipe", "laf_cnn_fast", "--tuned"]

    def params(*extra, methods="retrain,finetune,neggrad"):
        args = cli.build_parser().parse_args([*base, "--methods", methods, *extra])
        return cli._experiment_config(args, 0).params

    assert params() == {"finetune": {"lr": 0.004, "epochs": 2}}  # neggrad has none: its shipped settings
    assert "tuned settings for finetune; shipped settings for neggrad" in capsys.readouterr().err
    assert params("--param", "finetune.lr=0.01") == {"finetune": {"lr": 0.01, "epochs": 2}}
    mine = tmp_path / "best.json"
    mine.write_text(json.dumps({**doc, "method": "finetune", "params": {"lr": 0.02}}))
    assert params("--params-from", str(mine), methods="retrain,finetune,salun") == {
        "finetune": {"lr": 0.02}, "salun": {"lr": 0.002}}
    capsys.readouterr()
    # on another level nothing is published: one line, before any work
    rc = cli.main(["run", "--dataset", "digits", "--forget", "data:5-9:0.4", "--recipe", "laf_cnn_fast", "--tuned",
                   "--methods", "retrain,finetune", "--out", str(tmp_path / "no")])
    err = capsys.readouterr().err
    assert rc == 2 and "--tuned: no tuning result for digits (laf_cnn_fast, data-level)" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "no").exists()
