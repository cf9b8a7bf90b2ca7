"""The hardening matrix (docs/hardening.md), library and command-line rows that no other test file
enforces: bad input that used to print more than one line, damaged or missing data and no network
on the command line, unsafe checkpoints and run-store files, NaN/inf in EVERY registered method,
cancel at every phase of an experiment job, two experiment jobs at once, old run stores, the
ExperimentConfig round trip, and the torch.load rule. Rows enforced elsewhere are referenced in
the matrix, not repeated here.

Runs use a one-epoch "tiny" recipe (registered for the test only) on digits, so originals and
Retrains train in about a second."""

from __future__ import annotations

import ast
import copy
import dataclasses
import gzip
import json
import os
import pickle
import sqlite3
import struct
import subprocess
import sys
import threading
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from mixunlearn import jobs, training
from mixunlearn.cli import main
from mixunlearn.data import make_split
from mixunlearn.experiment import ExperimentConfig
from mixunlearn.jobs import CANCELLED, DONE, GpuQueue, JobRunner
from mixunlearn.methods import base as registry
from mixunlearn.methods import field_specs, get_method, make_config, method_names, run_method
from mixunlearn.models import build_model
from mixunlearn.progress import NonFiniteLossError
from mixunlearn.store import RunStore, StoreError
from mixunlearn.training import ModelCache, Recipe, get_trained, load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
ALL_METHODS = method_names()
TINY = Recipe("tiny", epochs=1, batch_size=64, lr=1e-3, description="one epoch, for tests")


@pytest.fixture
def tiny_recipe(monkeypatch):
    """Make ``--recipe tiny`` / ``recipe="tiny"`` known for this test only."""
    monkeypatch.setitem(training.RECIPES, "tiny", TINY)
    return "tiny"


def cli(args, capsys):
    """``python -m mixunlearn ARGS`` in this process: (exit code, stdout, stderr)."""
    try:
        rc = main(args)
    except SystemExit as exc:  # argparse errors
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err


def one_error_line(rc, err, expected_rc=2) -> str:
    assert rc == expected_rc, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("mixunlearn") and "Traceback" not in err
    return lines[0]


def short_overrides(name: str) -> dict:
    """Every epoch / step count of a method at its smallest allowed positive value."""
    out = {}
    for f in field_specs(get_method(name).config_cls):
        if f["type"] is int and (f["name"].endswith("epochs") or f["name"].endswith("steps")):
            out[f["name"]] = max(1, int(f["min"] if f["min"] is not None else 1))
    return out


class _Evil:
    """Unpickling this runs ``touch MARKER``: the marker file proves whether code was executed."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# =========================================================================== bad input, command line


BAD_INPUT = [
    # (arguments, what the one error line must say)
    (["--forget", "data:5-9:-0.2"], "outside (0, 1)"),
    (["--forget", "noisy:0-4:1"], "outside (0, 1)"),
    (["--forget", "data:5-9:"], "is not a number"),
    (["--forget", "data:5-9:0.4", "--methods", "retrain,unsir"], "does not support data-level"),
    (["--forget", "data:3:0.0001", "--methods", "retrain"], "empty forget set"),
    (["--forget", "class:0-9"], "forgets every class"),
    (["--forget", "class:-2"], "negative"),
    (["--forget", ""], "class:K"),
    (["--dataset", ""], "unknown dataset ''"),
    (["--methods", "retrain,finetune", "--param", "=1"], "METHOD.FIELD=VALUE"),
    (["--methods", "retrain,finetune", "--param", "lr=1"], "METHOD.FIELD=VALUE"),
    (["--methods", "retrain,finetune", "--param", "finetune.=1"], "METHOD.FIELD=VALUE"),
    (["--methods", "retrain,finetune", "--param", ".lr=1"], "METHOD.FIELD=VALUE"),
    (["--methods", "retrain,finetune", "--param", "finetune.lr="], "METHOD.FIELD=VALUE"),
    (["--methods", "retrain,finetune", "--param", "forgetful.lr=1"], "not in the run"),
    (["--methods", "retrain,finetune", "--param", "finetune.epochs=2.5"], "must be an integer"),
    (["--methods", "retrain,scrub", "--param", "scrub.lr_decay_epochs=a,b"], "must be an integer"),
    (["--seed", "1e3"], "seed must be a non-negative integer"),
    (["--seed", ""], "seed must be a non-negative integer"),
]


CASES = [("run", a, m) for a, m in BAD_INPUT] + [("bench", a, m) for a, m in BAD_INPUT if "--seed" not in a]


@pytest.mark.parametrize("command, args, message", CASES,
                         ids=[f"{c} {' '.join(x or repr(x) for x in a)}" for c, a, _ in CASES])
def test_bad_input_is_one_line_and_exit_2(command, args, message, capsys, tmp_path):
    rc, out, err = cli([command, *args, "--out", str(tmp_path / "o")], capsys)
    line = one_error_line(rc, err)
    assert message in line
    assert "[experiment]" not in err  # refused before any work started
    assert not (tmp_path / "o").exists()


# =========================================================================== data folders, command line


def _write_idx(path: Path, array: np.ndarray, magic: int | None = None, cut: int = 0) -> None:
    array = np.ascontiguousarray(array, dtype=np.uint8)
    magic = (0x0800 | array.ndim) if magic is None else magic
    blob = struct.pack(">I", magic) + struct.pack(">" + "I" * array.ndim, *array.shape) + array.tobytes()
    path.write_bytes(gzip.compress(blob[: len(blob) - cut]))


def idx_folder(folder: Path, damage: str = "") -> Path:
    """MNIST's four IDX files (40 train, 20 test images); ``damage`` spoils one of them."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (40, 28, 28)),
              "train-labels-idx1-ubyte": np.arange(40) % 10,
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (20, 28, 28)),
              "t10k-labels-idx1-ubyte": np.arange(20) % 10}
    if damage == "count":
        arrays["train-labels-idx1-ubyte"] = np.arange(39) % 10
    for stem, arr in arrays.items():
        spoil = stem == "train-images-idx3-ubyte"
        _write_idx(folder / f"{stem}.gz", arr, magic=0x12340803 if spoil and damage == "magic" else None,
                   cut=100 if spoil and damage == "truncated" else 0)
    return folder


DATA_CASES = {
    "missing": (lambda root: root / "nowhere", "Dataset 'mnist' not found"),
    "empty": (lambda root: (root / "empty").mkdir() or root / "empty", "Dataset 'mnist' not found"),
    "truncated": (lambda root: idx_folder(root / "t", "truncated"), "truncated or corrupt"),
    "wrong magic": (lambda root: idx_folder(root / "m", "magic"), "wrong magic number"),
    "wrong image count": (lambda root: idx_folder(root / "c", "count"), "40 images but 39 labels"),
}


@pytest.mark.parametrize("case", list(DATA_CASES))
def test_bad_data_folder_is_one_line_and_nothing_is_stored(case, capsys, tmp_path):
    make, message = DATA_CASES[case]
    folder = make(tmp_path)
    rc, out, err = cli(["run", "--dataset", "mnist", "--data-root", str(folder), "--no-download", "--store",
                        "--out", str(tmp_path / "o")], capsys)
    line = one_error_line(rc, err)
    assert message in line and str(folder) in line
    assert not (tmp_path / "o").exists()
    assert RunStore().list_runs(status=None) == []  # refused before the run was registered


def test_no_network_download_failure_is_one_line(capsys, tmp_path, monkeypatch):
    import mixunlearn.datasets as ds

    tried = []

    def offline(name, root):
        tried.append(name)
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(ds, "_torchvision_download", offline)
    rc, out, err = cli(["run", "--dataset", "mnist", "--data-root", str(tmp_path / "none"), "--out",
                        str(tmp_path / "o")], capsys)
    line = one_error_line(rc, err)
    assert tried == ["mnist"]  # it did try: downloading was allowed
    assert "Dataset 'mnist' not found" in line and "Download failed" in line and "Name or service" in line
    rc, out, err = cli(["bench", "--dataset", "mnist", "--seeds", "0,1", "--data-root", str(tmp_path / "none"),
                        "--out", str(tmp_path / "b")], capsys)
    assert "Download failed" in one_error_line(rc, err) and not (tmp_path / "b").exists()


def test_damaged_data_in_a_real_process_has_no_traceback(tmp_path):
    folder = idx_folder(tmp_path / "t", "truncated")
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "MIXUNLEARN_HOME": str(tmp_path / "h")}
    res = subprocess.run([sys.executable, "-m", "mixunlearn", "run", "--dataset", "mnist", "--data-root",
                          str(folder), "--out", str(tmp_path / "o")], capture_output=True, text=True, env=env,
                         timeout=300, cwd=ROOT)
    assert res.returncode == 2
    assert len(res.stderr.strip().splitlines()) == 1 and "truncated or corrupt" in res.stderr
    assert "Traceback" not in res.stderr + res.stdout


# =========================================================================== checkpoints and store files


def test_user_checkpoints_truncated_or_disguised_are_refused(tmp_path):
    src = build_model("digits_cnn", None, seed=1)
    model = build_model("digits_cnn", None, seed=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save(src.state_dict(), tmp_path / "full.pt")
    blob = (tmp_path / "full.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(blob[: len(blob) // 2])
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(tmp_path / "full.safetensors"))
    blob = (tmp_path / "full.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(blob[: len(blob) // 2])
    marker = tmp_path / "pwned"
    (tmp_path / "evil.safetensors").write_bytes(pickle.dumps({"w": _Evil(marker)}))
    torch.save({"w": _Evil(marker)}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    for name in ("cut.pt", "cut.safetensors", "evil.safetensors", "legacy.pt"):
        with pytest.raises(ValueError, match="cannot be loaded safely"):
            load_checkpoint(tmp_path / name, model)
    assert not marker.exists()  # never executed
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # never partly loaded


def _committed_run(store: RunStore) -> str:
    run_id = store.begin({"dataset": "digits", "forget": "class:3", "seed": 0})
    store.commit(run_id, {"methods": {"retrain": {"metrics": {"test_r": 99.0}, "status": "done"}}},
                 tensors={"w": torch.arange(4.0)})
    store.save_artifact(run_id, "proj-umap", {"xy": torch.zeros(4, 2)})
    return run_id


def test_pickles_planted_in_the_run_store_are_refused_never_executed(tmp_path):
    store = RunStore(tmp_path / "s")
    run_id = _committed_run(store)
    marker = tmp_path / "pwned"
    folder = store.runs_dir / run_id
    (folder / "tensors.safetensors").write_bytes(pickle.dumps({"w": _Evil(marker)}))
    (folder / "artifact-proj-umap.safetensors").write_bytes(pickle.dumps({"xy": _Evil(marker)}))
    with pytest.raises(StoreError, match="unreadable"):
        store.load_tensors(run_id)
    assert store.load_artifact(run_id, "proj-umap") is None  # a cache entry: recomputed by the caller
    assert not marker.exists()
    assert [r.id for r in store.list_runs()] == [run_id]  # the index itself stays readable


def test_cli_rebuilds_a_planted_pickle_in_the_model_cache_without_running_it(tiny_recipe, capsys, tmp_path):
    args = ["run", "--recipe", "tiny", "--methods", "retrain", "--no-attacks", "--quiet"]
    rc, out, err = cli(args + ["--out", str(tmp_path / "a")], capsys)
    assert rc == 0, err
    first = json.loads((tmp_path / "a" / "results.json").read_text())
    cache = ModelCache()
    key = first["info"]["cache"]["original"]
    weights, _ = cache.paths(key)
    marker = tmp_path / "pwned"
    weights.write_bytes(pickle.dumps({"normalize.mean": _Evil(marker)}))
    rc, out, err = cli(args + ["--out", str(tmp_path / "b")], capsys)
    assert rc == 0, err
    assert not marker.exists()
    assert f"cached checkpoint {key}.safetensors is unusable" in err and "rebuilt" in err
    second = json.loads((tmp_path / "b" / "results.json").read_text())
    assert second["original"].get("cached") is not True  # trained again...
    assert second["original"]["metrics"] == first["original"]["metrics"]  # ...to the same seeded model
    assert second["methods"]["retrain"]["cached"] is True  # the intact entry was reused


# =========================================================================== NaN / inf in every method


@pytest.fixture(scope="module")
def tiny_task(digits_dataset, tmp_path_factory):
    """A digits class:3 task of 160 samples and an original trained one epoch on it."""
    data = make_split(digits_dataset, "class:3", seed=0).subset(160, 40, seed=0)
    original = get_trained("original", data, "digits_cnn", TINY, cache=ModelCache(tmp_path_factory.mktemp("c")))
    return data, original.model


def poison(model: torch.nn.Module, value: float, after: int = 0) -> dict:
    """Every forward pass after the first ``after`` returns ``value`` (NaN or inf) from the model's
    first layer, whichever entry point (forward, features, mix_feature_map) a method uses. The hook
    travels with every deep copy the method makes (teachers, frozen originals)."""
    calls = {"n": 0}

    def hook(module, inputs, output):
        calls["n"] += 1
        if calls["n"] > after:
            return output * value if value != value else output + value

    model.normalize.register_forward_hook(hook)
    return calls


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
@pytest.mark.parametrize("name", ALL_METHODS)
def test_a_non_finite_value_stops_every_method_naming_it_and_the_step(name, value, tiny_task):
    data, original = tiny_task
    model = copy.deepcopy(original)
    poison(model, value)
    cfg = make_config(name, model.family, short_overrides(name))
    with pytest.raises(NonFiniteLossError) as err:
        run_method(name, model, data, cfg, device="cpu")
    exc = err.value
    assert exc.method == name and isinstance(exc.step, int) and exc.step >= 0
    text = str(exc)
    assert text.startswith(f"{name}: ") and f"step {exc.step}" in text and "no metrics" in text


def test_a_method_without_optimiser_steps_never_returns_non_finite_weights(tiny_task, monkeypatch):
    import mixunlearn.methods.ssd as ssd

    real = ssd.dampen

    def broken_dampen(model, *args, **kwargs):  # a numeric failure inside SSD's rule
        selected = real(model, *args, **kwargs)
        with torch.no_grad():
            model.head.weight[0, 0] = float("inf")
        return selected

    monkeypatch.setattr(ssd, "dampen", broken_dampen)
    data, original = tiny_task
    with pytest.raises(NonFiniteLossError, match=r"^ssd: a model weight became NaN or infinite at step \d+"):
        run_method("ssd", original, data, device="cpu")


@pytest.fixture
def throwaway_method():
    """Register a method for one test; it is removed from the registry afterwards."""
    names = []

    @dataclasses.dataclass(frozen=True)
    class Cfg(registry.MethodConfig):
        steps: int = registry.param(1, "steps", min=1, max=10)

    def register(name, fn):
        registry.register_method(name, config=Cfg, labels="aware", summary="test", paper="test")(fn)
        names.append(name)
        return name

    yield register
    for name in names:
        registry._REGISTRY.pop(name, None)


def test_a_method_that_hides_non_finite_weights_or_raises_floating_point_error_is_caught(
        tiny_task, throwaway_method):
    from mixunlearn.methods._loop import MethodLoop

    def silent(model, data, cfg, *, device, callbacks):  # returns without any check of its own
        with torch.no_grad():
            model.head.bias[1] = float("nan")
        return model

    def fpe(model, data, cfg, *, device, callbacks):
        loop = MethodLoop("_fpe", data, callbacks, 30, log_every=10)
        for _ in range(25):
            loop.step({"loss": torch.tensor(1.0)})
        raise FloatingPointError("Block: attention output is not finite")

    data, original = tiny_task
    # (a method function from outside the package is checked as a plugin's: the message names its file)
    with pytest.raises(NonFiniteLossError, match=r"^_silent( \(plugin [^)]*test_hardening\.py\))?: (a model weight "
                       r"became NaN or infinite when the method|returned a model with NaN or infinite weights)"):
        run_method(throwaway_method("_silent", silent), original, data, device="cpu")
    with pytest.raises(NonFiniteLossError) as err:
        run_method(throwaway_method("_fpe", fpe), original, data, device="cpu")
    assert err.value.method == "_fpe" and err.value.step == 20  # the last step it reported
    assert "after step 20" in str(err.value) and "attention output" in str(err.value)


def test_failed_methods_are_recorded_failed_and_never_as_valid_metrics(tiny_recipe, capsys, tmp_path, monkeypatch):
    import mixunlearn.experiment as experiment

    real = experiment.run_method
    healthy = "finetune"

    def poisoned(name, original, data, cfg=None, **kw):
        if name != healthy:
            original = copy.deepcopy(original)
            poison(original, float("nan"))
        return real(name, original, data, cfg, **kw)

    monkeypatch.setattr(experiment, "run_method", poisoned)
    methods = [m for m in ALL_METHODS if m != "retrain"]
    params = [f"{m}.{k}={v}" for m in methods for k, v in short_overrides(m).items()]
    rc, out, err = cli(["run", "--recipe", "tiny", "--methods", ",".join(["retrain", *methods]), "--no-attacks",
                        "--quiet", "--store", "--out", str(tmp_path / "o"), *sum((["--param", p] for p in params), [])],
                       capsys)
    assert rc == 0, err
    doc = json.loads((tmp_path / "o" / "results.json").read_text())
    assert doc["methods"][healthy]["status"] == "done" and doc["methods"][healthy]["metrics"]["test_r"] >= 0
    runs = RunStore().list_runs()
    assert len(runs) == 1
    stored = runs[0]
    for name in methods:
        if name == healthy:
            continue
        rec = doc["methods"][name]
        assert rec["status"] == "failed" and rec["metrics"] == {} and "gap_to_retrain" not in rec, name
        assert rec["error"].startswith(f"{name}: ") and "step" in rec["error"], rec["error"]
        assert f"{name:<22} FAILED: {name}: " in out  # the summary says so, with no numbers
        row = stored.methods[name]
        assert row["status"] == "failed" and row["metrics"] == {} and row["gap_to_retrain"] is None
        assert stored.results["methods"][name]["metrics"] == {}
    import csv
    import io

    from mixunlearn.jobs import comparison_csv
    from mixunlearn.metrics import ALL_METRICS

    rows = list(csv.DictReader(io.StringIO(comparison_csv(stored.results))))
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(failed) == len(methods) - 1
    assert all(r[k] == "" for r in failed for k in (*ALL_METRICS, "gap"))  # no number for a failed method


# =========================================================================== cancel at every phase


def _config(**kw) -> ExperimentConfig:
    base = dict(dataset="digits", forget="class:3", methods=("retrain", "finetune"), seed=0, device="cpu",
                recipe="tiny", attacks=False, params={"finetune": {"epochs": 1}})
    base.update(kw)
    return ExperimentConfig(**base)


def _at(source: str, phase: str):
    return lambda ev: ev.source == source and ev.phase == phase


CALLBACK_PHASES = {
    "training the original": _at("original", "train"),
    "training Retrain": _at("retrain", "train"),
    "unlearning": _at("finetune", "unlearn"),
    "evaluating": _at("finetune", "evaluate"),
}
PHASES = [*CALLBACK_PHASES, "building the analysis pack", "projecting"]


@pytest.mark.parametrize("phase", PHASES)
def test_cancel_at_each_phase_leaves_no_half_run_and_the_next_run_starts_at_once(
        phase, tiny_recipe, tmp_path, monkeypatch):
    from mixunlearn import analysis

    store = RunStore()
    earlier = _committed_run(store)
    earlier_row, earlier_tensors = store.get(earlier), store.load_tensors(earlier)
    runner = JobRunner(gpu_queue=GpuQueue())
    holder: dict = {}

    def cancel_now():
        holder["accepted"] = holder["job"].cancel()

    if phase in CALLBACK_PHASES:
        def fn(job):
            inner = jobs.experiment_job(_config(), store=store, project=None)
            real_callback = job.callback

            def spy(event):
                if "accepted" not in holder and CALLBACK_PHASES[phase](event):
                    cancel_now()
                real_callback(event)

            job.callback = spy
            return inner(job)
    else:
        target = "build_pack" if phase == "building the analysis pack" else "project"
        real = getattr(analysis, target)

        def cancelling(*args, **kwargs):
            if "accepted" not in holder:
                cancel_now()
            return real(*args, **kwargs)

        monkeypatch.setattr(analysis, target, cancelling)
        fn = jobs.experiment_job(_config(), store=store, project="pca" if phase == "projecting" else None)
    job = runner.submit(fn, label=phase)
    holder["job"] = job
    assert job.wait(300), f"{phase}: the job did not stop"
    assert "accepted" in holder, f"{phase} was never reached"
    complete = {r.id for r in store.list_runs()}
    run_id = job.run_id
    if phase == "projecting":
        # The run was saved before the projection (the point of no return): the cancel is refused
        # and the complete run stays whole, its projection included.
        assert holder["accepted"] is False and job.state == DONE, job.error + job.debug
        assert complete == {earlier, run_id}
        assert store.load_artifact(run_id, "proj-pca") is not None and store.load_tensors(run_id)
    else:
        assert holder["accepted"] is True and job.state == CANCELLED, job.error + job.debug
        assert "cancelled" in job.error.lower() and "Traceback" not in job.error
        assert complete == {earlier}
        assert store.get(run_id).status == "cancelled" and store.get(run_id).methods == {}
        assert not (store.runs_dir / run_id).exists() and not (store.runs_dir / f"{run_id}.partial").exists()
    if phase == "training the original":  # no half-trained model in the cache either
        assert list(ModelCache().root.glob("*.safetensors")) == [] and list(ModelCache().root.glob("*.tmp")) == []
    # The run completed earlier is intact and readable.
    again = store.get(earlier)
    assert (again.status, again.results, again.methods) == (earlier_row.status, earlier_row.results,
                                                           earlier_row.methods)
    assert torch.equal(store.load_tensors(earlier)["w"], earlier_tensors["w"])
    # A new run starts at once and completes (the cancelling hooks act only once).
    new = runner.submit(jobs.experiment_job(_config(), store=store, project=None), label="again")
    assert new.wait(300) and new.state == DONE, new.error + new.debug
    assert new.result["run_id"] in {r.id for r in store.list_runs()}


# =========================================================================== two jobs at once


def test_two_experiment_jobs_at_once_give_the_results_of_two_runs_alone(tiny_recipe, tmp_path):
    """Two sessions' runs overlapping in time (CPU jobs run side by side) give exactly what each
    run gives alone: no shared random state, no crossed models, separate runs in the store."""
    from mixunlearn.experiment import run_experiment

    configs = {"a": _config(forget="class:3", seed=0, methods=("retrain", "finetune", "neggrad")),
               "b": _config(forget="data:5-9:0.4", seed=1, methods=("retrain", "finetune", "neggrad"))}
    alone = {k: run_experiment(c, cache=ModelCache(tmp_path / f"alone-{k}")).to_json() for k, c in configs.items()}
    store = RunStore()
    runner = JobRunner(gpu_queue=GpuQueue())
    both = threading.Barrier(2, timeout=60)

    def overlapping(cfg, cache_dir):
        inner = jobs.experiment_job(cfg, store=store, cache=ModelCache(cache_dir), project=None)

        def fn(job):
            both.wait()  # passes only when the two jobs really run at the same time
            return inner(job)
        return fn

    running = {k: runner.submit(overlapping(c, tmp_path / f"together-{k}"), label=k) for k, c in configs.items()}
    for job in running.values():
        assert job.wait(300) and job.state == DONE, job.error + job.debug
    ids = {k: j.result["run_id"] for k, j in running.items()}
    assert ids["a"] != ids["b"] and {r.id for r in store.list_runs()} == set(ids.values())
    for k, job in running.items():
        row = store.get(ids[k])
        assert row.config["forget"] == configs[k].resolved().forget and row.seed == configs[k].seed
        for name, rec in alone[k]["methods"].items():
            assert row.results["methods"][name]["metrics"] == rec["metrics"], (k, name)
        assert set(job.view().latest) >= {"original", "retrain", "finetune", "neggrad"}


# =========================================================================== run store schema


def _version0_store(root: Path, with_config: bool = True) -> None:
    """A store of schema version 0 (no meta table, a bare runs table), written by hand."""
    root.mkdir(parents=True)
    con = sqlite3.connect(root / "index.sqlite")
    cols = "id TEXT PRIMARY KEY, created REAL NOT NULL, status TEXT NOT NULL, " + \
           ("config TEXT NOT NULL, " if with_config else "") + "results TEXT"
    con.execute(f"CREATE TABLE runs ({cols})")
    results = {"config": {"dataset": "digits", "forget": "class:3", "seed": 2},
               "methods": {"retrain": {"metrics": {"test_r": 99.0, "test_f": 0.0}, "seconds": 3.0, "status": "done"},
                           "finetune": {"metrics": {"test_r": 97.5, "test_f": 12.0}, "seconds": 1.0,
                                        "gap_to_retrain": 4.5, "status": "done"},
                           "gone_method": {"metrics": {"test_r": 50.0}, "status": "done"}}}  # since removed
    rows = [("old-complete", 100.0, "complete", json.dumps(results["config"]), json.dumps(results)),
            ("old-running", 101.0, "running", json.dumps({"dataset": "digits", "seed": 1}), None),
            ("old-garbled", 102.0, "complete", "{not json", "{not json"),
            ("../outside", 103.0, "whatever", "{}", None)]
    for row in rows:
        if not with_config:
            row = row[:3] + row[4:]
        con.execute(f"INSERT INTO runs VALUES ({', '.join('?' * len(row))})", row)
    con.commit()
    con.close()


def test_a_version0_store_is_migrated_and_keeps_working(tmp_path):
    root = tmp_path / "old"
    _version0_store(root)
    store = RunStore(root)
    with sqlite3.connect(root / "index.sqlite") as con:
        assert con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == ("1",)
    complete = store.list_runs()
    assert [r.id for r in complete] == ["old-complete"]
    old = complete[0]
    assert (old.dataset, old.forget, old.seed) == ("digits", "class:3", 2)
    assert old.methods["finetune"]["gap_to_retrain"] == 4.5
    assert old.methods["retrain"]["metrics"] == {"test_r": 99.0, "test_f": 0.0}
    assert json.loads(store.read_file("old-complete", "results.json")) == old.results
    statuses = {r.id: r.status for r in store.list_runs(status=None)}
    assert statuses["old-garbled"] == "failed" and "unreadable" in store.get("old-garbled").error
    renamed = [i for i in statuses if i.startswith("legacy-")]
    assert len(renamed) == 1 and statuses[renamed[0]] == "interrupted"  # an id is never a path
    assert not (root / "outside").exists()
    assert store.recover() == ["old-running"]  # no pid recorded: its process is gone
    new = store.begin({"dataset": "digits", "forget": "class:5", "seed": 0})
    store.commit(new, {"methods": {}})
    assert [r.id for r in RunStore(root).list_runs()] == [new, "old-complete"]  # opening again: no new migration


def test_a_store_that_cannot_be_migrated_is_refused_with_a_message(tmp_path, capsys, monkeypatch):
    root = tmp_path / "home" / "store"
    _version0_store(root, with_config=False)
    with pytest.raises(StoreError, match="without a 'config' column.*cannot be migrated.*MIXUNLEARN_HOME"):
        RunStore(root)
    with sqlite3.connect(root / "index.sqlite") as con:  # left as it was: no table added, no row changed
        assert [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")] == ["runs"]
        assert con.execute("SELECT count(*) FROM runs").fetchone() == (4,)
    monkeypatch.setenv("MIXUNLEARN_HOME", str(tmp_path / "home"))
    rc, out, err = cli(["run", "--methods", "retrain", "--store", "--out", str(tmp_path / "o")], capsys)
    assert "cannot be migrated" in one_error_line(rc, err)
    garbled = tmp_path / "garbled"
    RunStore(garbled)
    with sqlite3.connect(garbled / "index.sqlite") as con:
        con.execute("UPDATE meta SET value = 'one' WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match="unreadable schema version 'one'"):
        RunStore(garbled)


# =========================================================================== ExperimentConfig round trip


def _value(f: dict):
    t = f["type"]
    if f["choices"]:
        return st.sampled_from(list(f["choices"]))
    if t is bool:
        return st.booleans()
    if t is int:
        lo, hi = f["min"] if f["min"] is not None else -50, f["max"] if f["max"] is not None else 50
        return st.integers(int(lo), int(hi))
    if t is float:
        return st.floats(f["min"] if f["min"] is not None else -1e3, f["max"] if f["max"] is not None else 1e3,
                         allow_nan=False, allow_infinity=False)
    if t is str:
        return st.text(max_size=8)
    return st.lists(st.integers(0, 60), min_size=1, max_size=3).map(tuple)


@st.composite
def experiment_configs(draw):
    from mixunlearn.datasets import dataset_names
    from mixunlearn.training import RECIPES

    kind = draw(st.sampled_from(["class", "data", "noisy"]))
    classes = draw(st.lists(st.integers(0, 9), min_size=1, max_size=9 if kind == "class" else 10, unique=True))
    text = ",".join(map(str, classes))
    fraction = draw(st.floats(0.001, 0.999))
    forget = f"class:{text}" if kind == "class" else f"{kind}:{text}:{fraction!r}"
    usable = [m for m in ALL_METHODS if kind in get_method(m).kinds]
    methods = draw(st.lists(st.sampled_from(usable), min_size=1, max_size=4))
    params = {}
    for m in methods:
        fields = field_specs(get_method(m).config_cls)
        if m == "retrain" or not draw(st.booleans()):
            continue
        chosen = draw(st.lists(st.sampled_from(fields), max_size=3, unique_by=lambda f: f["name"]))
        params[m] = {f["name"]: draw(_value(f)) for f in chosen}
    return ExperimentConfig(
        dataset=draw(st.sampled_from(dataset_names())), forget=forget, methods=tuple(methods),
        seed=draw(st.integers(0, 2**31)), recipe=draw(st.sampled_from([None, *RECIPES])),
        device=draw(st.sampled_from(["auto", "cpu"])),
        data_root=draw(st.sampled_from([None, "/data", "dir with space"])),
        params=params, eval_split=draw(st.sampled_from(["test", "val"])), attacks=draw(st.booleans()),
        download=draw(st.booleans()))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(cfg=experiment_configs())
def test_experiment_config_round_trips_through_json(cfg):
    try:
        resolved = cfg.resolved()
    except ValueError:  # e.g. a method's own cross-field rule refuses a drawn combination
        assume(False)
    text = json.dumps(resolved.to_dict(), allow_nan=False)
    again = ExperimentConfig.from_dict(json.loads(text))
    assert again == resolved  # dataclass -> JSON -> dataclass, exactly
    assert again.resolved() == resolved  # resolving is idempotent
    # An unresolved config (tuples, text values) survives the trip to the same resolved config.
    raw = ExperimentConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert raw.resolved() == resolved


# =========================================================================== torch.load


def test_every_torch_load_passes_weights_only_true():
    """An AST scan of every Python file of the project (library, app, bench scripts, tests)."""
    files = [p for d in ("mixunlearn", "ui", "pages", "bench", "tests") for p in (ROOT / d).rglob("*.py")]
    files.append(ROOT / "app.py")
    calls = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load" \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch":
                ok = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                         for k in node.keywords)
                calls.append((f"{path.relative_to(ROOT)}:{node.lineno}", ok))
    assert calls, "the scan found no torch.load at all; is it looking at the right files?"
    assert [where for where, ok in calls if not ok] == []
