"""``bench --ray`` against real Ray clusters on this machine (no mocks): a local ``ray.init(num_cpus=2)``
and a two-node ``ray.cluster_utils.Cluster``. Each runs a small digits grid whose seedN.json metrics
must equal the serial bench's (same seeds, ``--threads 1``); a method whose loss is NaN by
construction (tests/ray_nan_method.py, on every CPU) is recorded as failed, with the same message, on
both paths; a worker killed mid-grid is retried; Ctrl-C cancels what is outstanding and
keeps the finished cells, from which the same command resumes; ``tune --ray`` runs its trials there.
Kept short: the fast recipe and cheap methods (about 1.5 min on 2 cores)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray  # in requirements.txt: a missing ray fails these tests, it does not skip them
from ray_nan_method import NAME as NAN_METHOD
from ray_nan_method import TESTS_DIR, register, unregister
from ray_nan_method import ray_env as nan_ray_env

from mixunlearn.cli import main

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
# NAN_METHOD's loss is 0/0 from its step 3 on (NaN on every CPU): the failed record must match too. (A real
# method driven to divergence, e.g. l1_sparse with lr 1.0, fails on one CPU and collapses on another.)
GRID = ["bench", "--dataset", "digits", "--forget", "class:0", "--methods", f"retrain,finetune,neggrad,{NAN_METHOD}",
        "--seeds", "0,1", "--recipe", "laf_cnn_fast", "--threads", "1", "--quiet"]
# The separate driver of the two-node test: the CLI, with the method registered and handed to the workers.
DRIVER = ("import sys, ray_nan_method as m; m.register(); import mixunlearn.ray_grid as g; "
          "base = g.runtime_env; g.runtime_env = lambda: m.ray_env(base()); "
          "from mixunlearn.cli import main; sys.exit(main(sys.argv[1:]))")


@pytest.fixture(scope="module", autouse=True)
def nan_method():
    """NAN_METHOD in this process's registry while this module's tests run, and only then."""
    register()
    yield NAN_METHOD
    unregister()


@contextlib.contextmanager
def env(**values):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def comparable(doc: dict) -> dict:
    """A seed document without what depends on where and when it ran (times, cache hits, device,
    hosts); every metric, gap, status, error and config stays."""
    rec = lambda r: {k: v for k, v in r.items() if k not in ("seconds", "cached")}  # noqa: E731
    return {"config": doc["config"], "original": rec(doc["original"]),
            "methods": {m: rec(r) for m, r in doc["methods"].items()},
            "info": {k: v for k, v in doc["info"].items() if k not in ("started", "seconds_total", "ray", "device")}}


def differences(a, b, path: str = "") -> list[str]:
    """Where two JSON values differ (paths and both values), for a readable failure."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in differences(a.get(k), b.get(k), f"{path}/{k}")]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def seed_docs(folder: Path) -> dict[str, dict]:
    files = sorted(folder.rglob("seed*.json"))
    return {str(p.relative_to(folder)): comparable(json.loads(p.read_text())) for p in files}


@pytest.fixture(scope="module")
def serial(tmp_path_factory):
    """The serial bench of GRID from an empty home: the reference every Ray run must equal."""
    out = tmp_path_factory.mktemp("serial") / "out"
    with env(MIXUNLEARN_HOME=str(tmp_path_factory.mktemp("serial_home"))):
        assert main([*GRID, "--out", str(out)]) == 0
    docs = seed_docs(out)
    assert sorted(docs) == ["seed0.json", "seed1.json"]
    for doc in docs.values():
        assert doc["methods"]["finetune"]["status"] == "done"
        failed = doc["methods"][NAN_METHOD]
        assert failed["status"] == "failed", failed
        assert failed["error"].startswith(f"{NAN_METHOD}: loss ce became NaN or infinite at step 5;"), failed["error"]
    return docs


# --------------------------------------------------------------------------- ray.init(num_cpus=2)


class TestLocalRay:
    @pytest.fixture(scope="class")
    def local_ray(self, tmp_path_factory):
        # The workers inherit this environment: their own model cache, empty at the start.
        with env(MIXUNLEARN_HOME=str(tmp_path_factory.mktemp("ray_home"))):
            # address="local": a new instance even where `ray start` left a note of another cluster
            ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.WARNING,
                     runtime_env=nan_ray_env())  # the workers register NAN_METHOD
        yield
        ray.shutdown()

    def test_metrics_equal_the_serial_bench(self, local_ray, serial, tmp_path, capsys):
        out = tmp_path / "ray"
        assert main([*GRID, "--ray", "auto", "--out", str(out)]) == 0
        assert not differences(seed_docs(out), serial)
        err = capsys.readouterr().err
        assert "[8/8]" in err and f"{NAN_METHOD}: FAILED" in err  # a line per cell (2 prepare + 6 methods)
        table = (out / "table.md").read_text()
        assert f"| {NAN_METHOD} | failed on every seed |" in table and "| finetune |" in table
        doc = json.loads((out / "seed0.json").read_text())
        assert set(doc["info"]["ray"]["cells"]) == {"original+retrain", "finetune", "neggrad", NAN_METHOD}

    def test_ctrl_c_cancels_the_rest_keeps_finished_cells_and_the_grid_resumes(self, local_ray, tmp_path, capsys):
        from mixunlearn import ray_grid
        from mixunlearn.experiment import ExperimentConfig

        out = tmp_path / "grid"
        forgets = ("class:0", "data:5-9:0.4")
        settings = [([ExperimentConfig(dataset="digits", forget=f, methods=("retrain", "finetune", "neggrad"),
                                       seed=2, recipe="laf_cnn_fast")], out / f"digits-{f.replace(':', '_')}")
                    for f in forgets]
        finished = []

        def interrupt(cell, result):
            finished.append(cell)
            raise KeyboardInterrupt  # what Ctrl-C raises in the driver's wait loop

        with pytest.raises(KeyboardInterrupt):
            ray_grid.run_grid_ray(settings, threads=1, on_cell=interrupt, write=lambda text: None)
        assert [c.name for c in finished] == ["original+retrain"]  # methods need their prepare cell
        written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.json"))
        assert len(written) == 1 and written[0].endswith("/seed2.json")
        kept = json.loads((out / written[0]).read_text())
        assert list(kept["methods"]) == ["retrain"] and kept["methods"]["retrain"]["status"] == "done"
        assert not list(out.rglob("table.*"))
        # The other prepare cell (training from an empty cache) was cancelled: the CPUs come back at once.
        deadline = time.time() + 5
        while ray.available_resources().get("CPU", 0) < 2 and time.time() < deadline:
            time.sleep(0.1)
        assert ray.available_resources().get("CPU", 0) == 2

        # The same grid as one command resumes: the finished cell is reused, the rest runs.
        capsys.readouterr()
        rc = main(["bench", "--dataset", "digits", "--forget", forgets[0], "--forget", forgets[1], "--methods",
                   "retrain,finetune,neggrad", "--seeds", "2", "--recipe", "laf_cnn_fast", "--threads", "1",
                   "--quiet", "--ray", "auto", "--out", str(out)])
        assert rc == 0
        err = capsys.readouterr().err
        assert f"reusing 0 method(s) from {out / written[0]}; running finetune, neggrad" in err
        for f in forgets:
            folder = out / f"digits-{f.replace(':', '_')}"
            doc = json.loads((folder / "seed2.json").read_text())
            assert [(m, r["status"]) for m, r in doc["methods"].items()] == [
                ("retrain", "done"), ("finetune", "done"), ("neggrad", "done")]
            assert doc["config"]["forget"] == f and (folder / "table.csv").is_file()
            assert f"digits · {f} ·" in (folder / "table.md").read_text()


    def test_evaluate_trains_the_retrained_pools_as_ray_tasks(self, local_ray, tmp_path, capsys):
        """Issue 14's hook: `evaluate --ray` trains each retrained pool member as a task, into this
        machine's cache, where the evaluation finds all of them; a member equals the one trained here."""
        import dataclasses

        import torch

        from mixunlearn.data import make_split
        from mixunlearn.datasets import load_dataset
        from mixunlearn.pools import pool_cache_parts, pool_seeds, retrained_model
        from mixunlearn.strong_eval import StrongEvalConfig
        from mixunlearn.training import ModelCache, get_recipe

        rc = main(["evaluate", "--dataset", "digits", "--forget", "class:3", "--methods", "retrain", "--pool", "3",
                   "--epochs", "1", "--depth-models", "0", "--ray", "auto", "--quiet", "--out", str(tmp_path / "ev")])
        err = capsys.readouterr().err
        assert rc == 0, err
        assert "[6/6] retrained pool (" in err  # 3 reference + 3 as-unlearner members, one line each
        assert "retrained pool (reference) ready: 3/3 from the cache" in err
        assert "retrained pool (unlearner) ready: 3/3 from the cache" in err
        assert (tmp_path / "ev" / "evaluation.json").is_file()

        data = make_split(load_dataset("digits"), "class:3", 0)
        cfg = StrongEvalConfig(dataset="digits", forget="class:3", methods=("retrain",), pool=3).resolved()
        recipe = dataclasses.replace(get_recipe(cfg.recipe), epochs=1)  # the data set's default, --epochs 1
        seed = pool_seeds(0, 3, "reference")[1]
        from_ray = retrained_model(data, "digits_cnn", recipe, seed, ModelCache())  # the cached member
        assert from_ray[2], "the member trained on Ray is in this machine's cache"
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # the workers' thread count
        try:
            here = retrained_model(data, "digits_cnn", recipe, seed, ModelCache(tmp_path / "own_cache"))
        finally:
            torch.set_num_threads(threads)
        assert not here[2] and here[3] == from_ray[3] == ModelCache.key(pool_cache_parts(data, "digits_cnn", recipe,
                                                                                         seed))
        for (k, a), b in zip(from_ray[0].state_dict().items(), here[0].state_dict().values()):
            assert torch.equal(a, b), k


    def test_tune_runs_its_trials_as_ray_tasks(self, local_ray, tmp_path, capsys):
        """`tune --ray`: the driver owns the study (ask/tell), the trials run in Ray workers and are
        told as they finish; best.json counts them."""
        import optuna

        out = tmp_path / "tune"
        rc = main(["tune", "--dataset", "digits", "--forget", "class:0", "--method", "neggrad", "--trials", "2",
                   "--seeds", "0", "--recipe", "laf_cnn_fast", "--out", str(out), "--ray", "auto", "--threads", "1",
                   "--max-time-ratio", "100", "--quiet"])
        err = capsys.readouterr().err
        assert rc == 0, err
        assert "[estimate]" in err and err.count("[tune] trial") == 2
        best = json.loads((out / "best.json").read_text())
        assert best["trials"] + best["failed"] == 2 and best["trials"] >= 1 and best["method"] == "neggrad"
        study = optuna.load_study(study_name=best["study_name"], storage=f"sqlite:///{out / 'study.db'}")
        where = {t.user_attrs["where"]["pid"] for t in study.get_trials() if t.user_attrs.get("where")}
        assert where and str(os.getpid()) not in where  # the trials ran in Ray workers, not the driver


# --------------------------------------------------------------------------- two nodes


def _ray_cells() -> list[int]:
    """Worker processes of this machine running a grid cell (Ray titles them ray::FUNCTION)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if cmd.startswith(b"ray::prepare_cell") or cmd.startswith(b"ray::method_cell"):
            pids.append(int(entry.name))
    return pids


class TestTwoNodeCluster:
    @pytest.fixture(scope="class")
    def cluster(self, tmp_path_factory):
        from ray.cluster_utils import Cluster

        # Two nodes of one CPU each, each with its own model cache (no shared file system assumed).
        with env(MIXUNLEARN_HOME=str(tmp_path_factory.mktemp("head_home"))):
            c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
        with env(MIXUNLEARN_HOME=str(tmp_path_factory.mktemp("node2_home"))):
            c.add_node(num_cpus=1)
        c.wait_for_nodes()
        yield c
        c.shutdown()

    def test_a_worker_killed_mid_grid_is_retried_and_the_metrics_equal_the_serial_bench(
            self, cluster, serial, tmp_path):
        assert not ray.is_initialized()
        out = tmp_path / "ray2"
        path = os.pathsep.join([str(ROOT), TESTS_DIR, os.environ.get("PYTHONPATH", "")])
        run_env = {**os.environ, "PYTHONPATH": path}
        # A separate driver process, as a user would run it, given the head's address (the CLI, with the
        # test's NaN method registered there and in the workers).
        driver = subprocess.Popen([sys.executable, "-c", DRIVER, *GRID, "--ray", cluster.address,
                                   "--out", str(out)], cwd=ROOT, env=run_env, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        killed = None
        deadline = time.time() + 120
        while killed is None and driver.poll() is None and time.time() < deadline:
            cells = _ray_cells()
            if cells:
                killed = cells[0]
                os.kill(killed, signal.SIGKILL)  # a worker dies mid-cell
            time.sleep(0.05)
        stdout, stderr = driver.communicate(timeout=300)
        assert killed is not None, "no grid cell was seen running"
        assert driver.returncode == 0, stderr[-3000:]
        assert "wrote" in stdout and "[8/8]" in stderr
        assert not differences(seed_docs(out), serial)
        nodes = {w["node"] for p in out.glob("seed*.json")
                 for w in json.loads(p.read_text())["info"]["ray"]["cells"].values()}
        assert len(nodes) == 2  # the cells ran on both nodes


# --------------------------------------------------------------------------- errors and imports


@pytest.mark.parametrize("address, ray_env, message", [
    ("127.0.0.1:9", {}, "--ray 127.0.0.1:9: no Ray cluster answers there"),
    # auto finds an address (here from RAY_ADDRESS; else the note of the last cluster started on this
    # machine) where nothing answers any more: one line at once, not Ray's minute of retries.
    ("auto", {"RAY_ADDRESS": "127.0.0.1:9"}, "--ray auto: no running Ray cluster found"),
])
def test_ray_with_no_cluster_there_is_one_line_and_exit_2(address, ray_env, message, tmp_path, monkeypatch,
                                                          capsys):
    for k, v in ray_env.items():
        monkeypatch.setenv(k, v)
    assert not ray.is_initialized()
    # "At once" by construction, not by a clock: the address is refused before ray.init, whose
    # retries are what would take a minute.
    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail(f"ray.init was called ({a}, {k})"))
    rc = main(["bench", "--methods", "retrain", "--seeds", "0", "--ray", address, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.count("\n") == 1 and err.startswith(f"mixunlearn: error: {message}")
    assert not ray.is_initialized()
    models = Path(os.environ["MIXUNLEARN_HOME"]) / "models"
    assert not models.exists() or not list(models.iterdir())  # nothing was trained


def test_the_library_imports_ray_only_on_the_ray_path():
    code = ("import sys, mixunlearn.cli as c, mixunlearn.bench, mixunlearn.experiment, mixunlearn.jobs; "
            "c.build_parser().parse_args(['bench', '--ray']); assert 'ray' not in sys.modules, 'ray imported'")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 0, res.stderr
