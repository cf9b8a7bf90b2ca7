"""The command line: `list`, `run` and its results.json contract (DESIGN.md), the issue's acceptance
run with cache reuse, `bench`, and bad arguments (one line on stderr, exit code 2, no traceback)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mixunlearn.cli import format_summary, main
from mixunlearn.methods import method_names
from mixunlearn.metrics import accuracy, predict_logits

ROOT = Path(__file__).resolve().parents[1]
CONTRACT_METRICS = ("test_r", "test_f", "train_r", "train_f", "test", "asr", "mia_efficacy")


def run_cli(args, env=None, timeout=600):
    full_env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "mixunlearn", *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout, cwd=ROOT)


def in_process(args, capsys):
    try:
        rc = main(args)
    except SystemExit as exc:  # argparse errors
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err


def strict_json(path: Path) -> dict:
    """Parse results.json refusing NaN / Infinity tokens (the file must be strict JSON)."""
    def refuse(token):
        raise AssertionError(f"results.json contains {token}")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.fixture
def warm_home(tmp_path, session_cache, digits_class3, monkeypatch):
    """A MIXUNLEARN_HOME whose model cache is the session's (digits originals and Retrains)."""
    home = tmp_path / "warm_home"
    home.mkdir()
    (home / "models").symlink_to(session_cache.root, target_is_directory=True)
    monkeypatch.setenv("MIXUNLEARN_HOME", str(home))
    return home


# --------------------------------------------------------------------------- list


def test_list_names_datasets_models_and_every_method():
    res = run_cli(["list"])
    assert res.returncode == 0, res.stderr
    out = res.stdout
    for section in ("Datasets:", "Models:", "Recipes:", "Methods:"):
        assert section in out
    for name in ("digits", "mnist", "fashion_mnist", "cifar10", "svhn", "digits_cnn", "cnn2", "resnet18"):
        assert f"  {name} " in out
    methods_part = out.split("Methods:")[1]
    for name in method_names():
        assert f"  {name} " in methods_part
    assert "Traceback" not in res.stderr


# --------------------------------------------------------------------------- run: contract and acceptance


def _check_contract(results: dict, methods: tuple[str, ...]) -> None:
    cfg = results["config"]
    for key in ("dataset", "forget", "methods", "seed", "model", "recipe", "params", "eval_split"):
        assert key in cfg
    assert list(results["methods"]) == list(methods)  # Retrain first
    for name, rec in results["methods"].items():
        m = rec["metrics"]
        for key in CONTRACT_METRICS:
            assert isinstance(m[key], float) and 0.0 <= m[key] <= 100.0, (name, key, m.get(key))
        assert isinstance(rec["seconds"], float) and rec["seconds"] >= 0
        if name != "retrain":
            assert isinstance(rec["gap_to_retrain"], float) and rec["gap_to_retrain"] >= 0


def test_run_acceptance_and_cache_reuse(warm_home, digits_class3, tmp_path, capsys):
    # The digits tables' recipe: the session's warm cache holds its models.
    args = ["run", "--dataset", "digits", "--forget", "class:3", "--methods", "retrain,finetune,neggrad",
            "--seed", "0", "--recipe", "digits"]
    first = run_cli(args + ["--out", str(tmp_path / "a")], env={"MIXUNLEARN_HOME": str(warm_home)})
    assert first.returncode == 0, first.stderr[-2000:]
    assert "wrote" in first.stdout and "Traceback" not in first.stderr
    a = strict_json(tmp_path / "a" / "results.json")
    _check_contract(a, ("retrain", "finetune", "neggrad"))
    retrain, original = a["methods"]["retrain"]["metrics"], a["original"]["metrics"]
    assert retrain["test_f"] == 0.0 and retrain["test_r"] >= 95.0
    assert original["test"] >= 97.0
    assert a["config"]["forget"] == "class:3" and a["config"]["seed"] == 0 and a["config"]["model"] == "digits_cnn"
    # The numbers are those of the cached models themselves.
    data, orig_model, _ = digits_class3
    assert original["test"] == pytest.approx(accuracy(predict_logits(orig_model, data.x_test), data.y_test), abs=1e-3)
    # A second identical run (in-process) says it reuses both models and gives identical metrics.
    rc, out, err = in_process(args + ["--out", str(tmp_path / "b")], capsys)
    assert rc == 0, err
    assert "reusing cached original" in err and "reusing cached retrain" in err
    b = strict_json(tmp_path / "b" / "results.json")
    for name in a["methods"]:
        assert b["methods"][name]["metrics"] == a["methods"][name]["metrics"], name
        assert b["methods"][name].get("gap_to_retrain") == a["methods"][name].get("gap_to_retrain")
    assert b["original"]["metrics"] == original
    assert b["methods"]["retrain"]["cached"] and b["original"]["cached"]
    assert b["config"] == a["config"]


def test_run_data_level_store_and_no_attacks(warm_home, digits_data_level, tmp_path, capsys):
    from mixunlearn.store import RunStore

    rc, out, err = in_process(["run", "--forget", "data:5-9:0.4", "--methods", "retrain", "--no-attacks",
                               "--recipe", "digits", "--store", "--quiet", "--out", str(tmp_path / "d")], capsys)
    assert rc == 0, err
    res = strict_json(tmp_path / "d" / "results.json")
    assert res["info"]["level"] == "data" and res["config"]["attacks"] is False
    m = res["methods"]["retrain"]["metrics"]
    assert "asr" not in m and "mia_efficacy" not in m
    assert 0.0 <= m["train_f"] <= 100.0 and m["train_r"] >= 95.0
    runs = RunStore().list_runs()
    assert len(runs) == 1 and runs[0].results == res and "stored as run" in out


def test_bench_writes_tables(warm_home, digits_class3, tmp_path, capsys):
    rc, out, err = in_process(["bench", "--methods", "retrain", "--seeds", "0", "--no-attacks", "--quiet",
                               "--out", str(tmp_path / "bench")], capsys)
    assert rc == 0, err
    assert (tmp_path / "bench" / "table.csv").is_file()
    md = (tmp_path / "bench" / "table.md").read_text()
    assert "| retrain |" in md and "seeds 0" in md
    assert "Traceback" not in err


# --------------------------------------------------------------------------- NaN never reaches results.json


def test_results_json_turns_nan_into_null(tmp_path):
    from mixunlearn.experiment import ExperimentConfig, ExperimentResult, MethodRecord

    nan = float("nan")
    rec = MethodRecord("finetune", "FT", "aware", "done", {"test_r": 90.0, "test_f": nan, "asr": float("inf")},
                       seconds=nan, gap_to_retrain=nan, config={"lr": 0.01, "odd": (1, 2)})
    base = MethodRecord("retrain", "Retrain", "aware", "done", {"test_r": 95.0, "test_f": 0.0}, 1.0, 0.0)
    result = ExperimentResult(ExperimentConfig(), base, {"retrain": base, "finetune": rec},
                              info={"level": "class", "metric_set": ["test_r", "test_f", "asr"], "x": nan})
    path = result.write(tmp_path)
    doc = strict_json(path)
    ft = doc["methods"]["finetune"]
    assert ft["metrics"] == {"test_r": 90.0, "test_f": None, "asr": None}
    assert ft["seconds"] is None and ft["gap_to_retrain"] is None and doc["info"]["x"] is None
    assert ft["config"]["odd"] == [1, 2]
    text = format_summary(doc)  # a null metric prints as n/a instead of crashing
    assert "n/a" in text and "finetune" in text


# --------------------------------------------------------------------------- bad arguments


BAD = [
    (["run", "--dataset", "imagenet"], "unknown dataset 'imagenet'; known: digits"),
    (["run", "--methods", "retrain,forgetful"], "unknown method 'forgetful'; known:"),
    (["run", "--model", "vgg16"], "unknown model 'vgg16'; known:"),
    (["run", "--model", "resnet18"], "does not fit"),
    (["run", "--forget", "class:10"], "0..9"),
    (["run", "--forget", "class:-1"], "0..9"),
    (["run", "--forget", "data:5-9:0"], "(0, 1)"),
    (["run", "--forget", "data:5-9:1"], "(0, 1)"),
    (["run", "--forget", "data:5-9:abc"], "not a number"),
    (["run", "--forget", "everything"], "class:K"),
    (["run", "--param", "finetune.lr"], "METHOD.FIELD=VALUE"),
    (["run", "--param", "finetune.learning_rate=0.1"], "unknown parameter 'learning_rate'"),
    (["run", "--param", "finetune.lr=fast"], "must be a number"),
    (["run", "--param", "finetune.lr=5"], "above its maximum"),
    (["run", "--methods", "retrain,finetune", "--param", "neggrad.lr=0.001"], "not in the run"),
    (["run", "--param", "retrain.epochs=3"], "Retrain is the cached oracle"),
    (["run", "--seed", "1.5"], "seed must be a non-negative integer"),
    (["run", "--seed", "-1"], "seed must be a non-negative integer"),
    (["run", "--seed", "abc"], "seed must be a non-negative integer"),
    (["bench", "--seeds", "0,x"], "seed must be a non-negative integer"),
    (["run", "--device", "tpu"], "unknown device 'tpu'"),
    (["run", "--device", "cuda:abc"], "unknown device 'cuda:abc'"),
    (["run", "--methods", ","], "no method given"),
    (["run", "--eval-split", "train"], "invalid choice"),
    (["frobnicate"], "invalid choice"),
    ([], "required"),
]


@pytest.mark.parametrize("args, message", BAD, ids=[" ".join(a) or "nothing" for a, _ in BAD])
def test_bad_arguments_one_line_exit_2(args, message, capsys, tmp_path):
    rc, out, err = in_process(args + (["--out", str(tmp_path / "o")] if args[:1] == ["run"] else []), capsys)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert message in lines[0] and "Traceback" not in err
    assert not (tmp_path / "o").exists()  # nothing written


def test_missing_data_folder_without_download(tmp_path, capsys):
    empty = tmp_path / "no_data"
    empty.mkdir()
    rc, out, err = in_process(["run", "--dataset", "mnist", "--data-root", str(empty), "--no-download",
                               "--out", str(tmp_path / "o")], capsys)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err
    assert "Dataset 'mnist' not found" in lines[0] and str(empty) in lines[0] and "--data-root" in lines[0]


@pytest.mark.parametrize("args, message", [
    (["run", "--methods", "retrain,forgetful"], "unknown method 'forgetful'"),
    (["run", "--seed", "x"], "seed must be a non-negative integer"),
])
def test_bad_arguments_in_a_real_process(args, message, tmp_path):
    res = run_cli(args + ["--out", str(tmp_path / "o")], env={"MIXUNLEARN_HOME": str(tmp_path / "h")}, timeout=300)
    assert res.returncode == 2
    assert len(res.stderr.strip().splitlines()) == 1 and message in res.stderr
    assert "Traceback" not in res.stderr + res.stdout


def test_internal_errors_are_one_line_too(monkeypatch, capsys):
    import mixunlearn.cli as cli

    def boom(args):
        raise KeyError("something broke")

    monkeypatch.setattr(cli, "cmd_list", lambda: boom(None))
    monkeypatch.delenv("MIXUNLEARN_DEBUG", raising=False)
    rc, out, err = in_process(["list"], capsys)
    assert rc == 1 and len(err.strip().splitlines()) == 1 and "internal error (KeyError)" in err
    monkeypatch.setenv("MIXUNLEARN_DEBUG", "1")
    with pytest.raises(KeyError):
        main(["list"])


def test_format_summary_is_resilient():
    doc = {"info": {"level": "class", "metric_set": ["test_r", "test_f", "asr"]},
           "original": {"metrics": {"test_r": 99.0, "test_f": None, "asr": 50.0}, "seconds": 1.0, "cached": True},
           "methods": {"retrain": {"metrics": {"test_r": 98.0, "test_f": 0.0}, "seconds": None, "gap_to_retrain": 0.0},
                       "bad": {"status": "failed", "error": "NaN at step 3", "metrics": {}, "seconds": 0.0}}}
    text = format_summary(doc)
    assert "FAILED: NaN at step 3" in text and "(cached)" in text and text.count("n/a") >= 2


# --------------------------------------------------------------------------- ExperimentConfig and bench tables


def test_experiment_config_resolved_validation():
    import numpy as np

    from mixunlearn.experiment import ExperimentConfig

    cfg = ExperimentConfig(methods="finetune, neggrad,finetune", seed=np.int64(2)).resolved()
    assert cfg.methods == ("retrain", "finetune", "neggrad") and cfg.seed == 2 and type(cfg.seed) is int
    assert cfg.model == "digits_cnn" and cfg.recipe == "digits_fast" and cfg.forget == "class:3"  # fast default
    assert ExperimentConfig(forget="data:5,6,7,8,9:0.40").resolved().forget == "data:5-9:0.4"
    for bad, message in [
        ({"seed": True}, "non-negative integer"), ({"seed": "0"}, "non-negative integer"),
        ({"seed": -3}, "non-negative integer"), ({"seed": 1.0}, "non-negative integer"),
        ({"methods": ()}, "no method given"), ({"methods": (1, 2)}, "names"),
        ({"methods": ("unsir",), "forget": "data:5-9:0.4"}, "does not support data-level"),
        ({"params": {"neggrad": {"lr": "0.1"}}, "methods": ("finetune",)}, "not in the run"),
        ({"params": {"finetune": {"lr": "9"}}}, "above its maximum"),
        ({"params": {"finetune": 3}}, "must map field names"),
        ({"params": {"retrain": {"epochs": 2}}}, "cached oracle"),
        ({"eval_split": "train"}, "'test' or 'val'"),
        ({"device": "gpu"}, "unknown device"),
        ({"recipe": "fast"}, "unknown recipe"),
    ]:
        with pytest.raises(ValueError, match=message):
            ExperimentConfig(**bad).resolved()
    again = ExperimentConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    with pytest.raises(ValueError, match="unknown experiment field"):
        ExperimentConfig.from_dict({"datset": "digits"})


def test_bench_summary_tolerates_null_values():
    from mixunlearn.bench import summarise, to_markdown

    def res(seed, asr, secs):
        return {"config": {"seed": seed}, "info": {"level": "class"},
                "methods": {"retrain": {"status": "done", "labels": "aware", "seconds": 2.0,
                                        "metrics": {"test_r": 98.0, "test_f": 0.0, "asr": 30.0}},
                            "ft": {"status": "done", "labels": "aware", "seconds": secs,
                                   "metrics": {"test_r": 96.0 + seed, "test_f": None, "asr": asr}},
                            "bad": {"status": "failed", "metrics": {}, "seconds": 0.0}}}

    rows = summarise([res(0, 40.0, 1.0), res(2, 50.0, None)])
    ft = {r["method"]: r for r in rows}["ft"]
    assert ft["test_r"] == pytest.approx(97.0) and ft["test_r_std"] == pytest.approx(2 ** 0.5)
    assert ft["asr"] == pytest.approx(45.0) and ft["seconds"] == pytest.approx(1.0)
    assert ft["time_ratio_to_retrain"] == pytest.approx(0.5)
    assert {r["method"]: r for r in rows}["bad"]["seeds_ok"] == 0
    md = to_markdown(rows, "class", "t")
    assert "| ft |" in md and "failed on every seed" in md


def test_out_that_is_a_file_fails_before_the_run(tmp_path, capsys):
    target = tmp_path / "taken"
    target.write_text("x")
    rc, out, err = in_process(["run", "--methods", "retrain", "--out", str(target)], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "is not a folder" in err
    assert "[experiment]" not in err  # refused before any work started


@pytest.mark.parametrize("exc, rc, status", [("value", 2, "failed"), ("cancel", 130, "cancelled")])
def test_stored_run_that_fails_or_is_cancelled_is_recorded_so(exc, rc, status, tmp_path, capsys, monkeypatch):
    import mixunlearn.experiment as experiment
    from mixunlearn.progress import RunCancelled
    from mixunlearn.store import RunStore

    def broken(cfg, callbacks=None, **kw):
        raise ValueError("bad things") if exc == "value" else RunCancelled("stop")

    monkeypatch.setattr(experiment, "run_experiment", broken)
    code, out, err = in_process(["run", "--methods", "retrain", "--store", "--out", str(tmp_path / "o")], capsys)
    # One error line after the time estimate printed before the work.
    lines = err.strip().splitlines()
    assert lines[0].startswith("[estimate] about ") and " on cpu: original " in lines[0]
    assert code == rc and len(lines) == 2 and "Traceback" not in err
    runs = RunStore().list_runs(status=None)
    assert [r.status for r in runs] == [status]
    assert not (tmp_path / "o").exists()


def test_bench_resumes_from_matching_seed_files_only(warm_home, digits_class3, tmp_path, capsys):
    from mixunlearn.bench import reusable_result
    from mixunlearn.experiment import ExperimentConfig

    out = tmp_path / "grid"
    base = ["bench", "--methods", "retrain,neggrad", "--no-attacks", "--quiet", "--out", str(out)]
    rc, _, err = in_process(base + ["--param", "neggrad.epochs=1", "--seeds", "0"], capsys)
    assert rc == 0, err
    seed0 = out / "seed0.json"
    first = seed0.read_text()
    stamp = seed0.stat().st_mtime_ns
    # The same grid again: the seed file is read back, not rewritten, and the table is the same.
    table1 = (out / "table.md").read_text()
    rc, _, err = in_process(base + ["--param", "neggrad.epochs=1", "--seeds", "0"], capsys)
    assert rc == 0, err
    assert seed0.stat().st_mtime_ns == stamp and (out / "table.md").read_text() == table1
    # Another hyper-parameter is another experiment: seed 0 runs again.
    rc, _, err = in_process(base + ["--param", "neggrad.epochs=2", "--seeds", "0"], capsys)
    assert rc == 0, err
    assert json.loads(seed0.read_text())["methods"]["neggrad"]["config"]["epochs"] == 2
    # --fresh reruns even a matching file; a damaged file is rerun, not trusted.
    seed0.write_text(first)
    stamp = seed0.stat().st_mtime_ns
    rc, _, err = in_process(base + ["--param", "neggrad.epochs=1", "--seeds", "0", "--fresh"], capsys)
    assert rc == 0, err
    assert seed0.stat().st_mtime_ns != stamp
    seed0.write_text(first[: len(first) // 2])
    rc, _, err = in_process(base + ["--param", "neggrad.epochs=1", "--seeds", "0"], capsys)
    assert rc == 0, err
    assert json.loads(seed0.read_text())["methods"]["neggrad"]["status"] == "done"
    # A file made with other method defaults (here: another lr) or with a failed method is not reused.
    cfg = ExperimentConfig(dataset="digits", forget="class:3", methods=("retrain", "neggrad"), seed=0,
                           params={"neggrad": {"epochs": 1}}, attacks=False).resolved()
    good = seed0.read_text()
    assert reusable_result(seed0, cfg) is not None
    # Whether downloads were allowed changes no result; another data field does.
    assert reusable_result(seed0, dataclasses.replace(cfg, download=not cfg.download)) is not None
    assert reusable_result(seed0, dataclasses.replace(cfg, eval_split="val")) is None
    doc = json.loads(good)
    doc["methods"]["neggrad"]["config"]["lr"] *= 10
    seed0.write_text(json.dumps(doc))
    assert reusable_result(seed0, cfg) is None
    doc = json.loads(good)
    doc["methods"]["neggrad"]["status"] = "failed"
    seed0.write_text(json.dumps(doc))
    assert reusable_result(seed0, cfg) is None


def test_bench_reruns_only_the_stale_or_missing_methods(warm_home, digits_class3, tmp_path, capsys):
    out = tmp_path / "grid"
    base = ["bench", "--no-attacks", "--quiet", "--out", str(out), "--seeds", "0"]
    rc, _, err = in_process(base + ["--methods", "retrain,finetune,neggrad", "--param", "neggrad.epochs=1",
                                    "--param", "finetune.epochs=1"], capsys)
    assert rc == 0, err
    seed0 = out / "seed0.json"
    first = json.loads(seed0.read_text())
    # Change NegGrad's hyper-parameters and add a method: Fine-tune's record is kept as it was.
    rc, _, err = in_process(base + ["--methods", "retrain,finetune,neggrad,random_label", "--param",
                                    "neggrad.epochs=2", "--param", "finetune.epochs=1",
                                    "--param", "random_label.epochs=1"], capsys)
    assert rc == 0, err
    second = json.loads(seed0.read_text())
    assert list(second["methods"]) == ["retrain", "finetune", "neggrad", "random_label"]
    assert second["methods"]["finetune"] == first["methods"]["finetune"]  # not rerun (same seconds too)
    assert second["methods"]["neggrad"]["config"]["epochs"] == 2
    assert second["methods"]["random_label"]["status"] == "done"
    assert second["methods"]["retrain"]["metrics"] == first["methods"]["retrain"]["metrics"]  # same cached model
    assert second["config"]["methods"] == ["retrain", "finetune", "neggrad", "random_label"]
    assert "finetune" in (out / "table.md").read_text() and "random_label" in (out / "table.md").read_text()
    # Asking for fewer methods reads the file back without running anything.
    stamp = seed0.stat().st_mtime_ns
    rc, _, err = in_process(base + ["--methods", "retrain,finetune", "--param", "finetune.epochs=1"], capsys)
    assert rc == 0, err
    assert seed0.stat().st_mtime_ns == stamp
    assert "neggrad" not in (out / "table.md").read_text()
