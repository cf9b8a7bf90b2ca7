"""Hardening round 3 (docs/hardening.md, "Round 3"): the findings of an outside probe. Each test
failed on the code before its fix (checked by running it against that code).

Where a check must come before any work, the work it guards is replaced by a function that fails
the test when it is called. Nothing here depends on timing: a bounded wait is a deadline, never an
assertion about speed."""

from __future__ import annotations

import gzip
import http.server
import json
import math
import os
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from test_hardening import cli, idx_folder, one_error_line

from mixunlearn import bench, datasets, experiment, jobs, strong_eval, training
from mixunlearn.data import make_split
from mixunlearn.datasets import CorruptDataError, DataNotFoundError, load_dataset, read_idx
from mixunlearn.experiment import ExperimentConfig
from mixunlearn.store import RunStore
from mixunlearn.training import ModelCache, Recipe

ROOT = Path(__file__).resolve().parents[1]
TINY = Recipe("tiny3", epochs=1, batch_size=64, lr=1e-3, description="one epoch, for tests")


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setitem(training.RECIPES, "tiny3", TINY)
    return "tiny3"


@pytest.fixture
def no_work(monkeypatch):
    """Every entry into real work fails the test."""
    def started(*args, **kwargs):
        raise AssertionError("work started although it should have been refused first")

    monkeypatch.setattr(experiment, "prepare_data", started)
    monkeypatch.setattr(experiment, "run_experiment", started)
    monkeypatch.setattr(bench, "run_bench", started)


def _unwritable_dir() -> Path:
    """A folder in which no file can be created, even by root (a kernel file system)."""
    for cand in (Path("/sys/kernel"), Path("/proc/self")):
        if cand.is_dir():
            try:
                with open(cand / ".mixunlearn-probe", "x"):
                    pass
            except OSError:
                return cand
            os.unlink(cand / ".mixunlearn-probe")
    pytest.skip("no folder here refuses new files")


# =========================================================================== R3.1 the data's fingerprint


def _shifted_copy(src: Path, dst: Path) -> Path:
    """The same IDX folder with every training label moved to the next class."""
    idx_folder(dst)
    labels = np.asarray(read_idx(src / "train-labels-idx1-ubyte.gz"))
    with gzip.open(dst / "train-labels-idx1-ubyte.gz", "wb") as fh:
        fh.write(struct.pack(">BBBBI", 0, 0, 8, 1, len(labels)) + ((labels + 1) % 10).astype(np.uint8).tobytes())
    return dst


def test_two_folders_of_the_same_size_with_other_labels_never_share_a_cached_model(tiny, tmp_path):
    a = idx_folder(tmp_path / "a")
    b = _shifted_copy(a, tmp_path / "b")

    def run(folder: Path) -> dict:
        cfg = ExperimentConfig(dataset="mnist", data_root=str(folder), recipe=tiny, methods=("retrain",),
                               attacks=False, download=False, device="cpu")
        return experiment.run_experiment(cfg).to_json()  # one home, one model cache

    first, second, again = run(a), run(b), run(a)
    assert not second["original"].get("cached") and not second["methods"]["retrain"].get("cached")
    assert second["info"]["cache"]["original"] != first["info"]["cache"]["original"]
    assert second["info"]["data_hash"] != first["info"]["data_hash"]
    # the cache still works for the same data
    assert again["original"].get("cached") and again["info"]["cache"] == first["info"]["cache"]


def test_the_fingerprint_covers_images_and_labels_after_the_split(digits_dataset):
    import dataclasses

    from mixunlearn.datahash import data_hash

    base = make_split(digits_dataset, "class:3", seed=0)
    assert data_hash(base) == data_hash(make_split(digits_dataset, "class:3", seed=0))
    # the same split seeds differ in nothing the data holds: one fingerprint (seed is in the key already)
    assert data_hash(base) == data_hash(make_split(digits_dataset, "class:3", seed=5))
    assert data_hash(base) != data_hash(make_split(digits_dataset, "class:3", seed=0, eval_split="val"))
    other = dataclasses.replace(digits_dataset, x_test=digits_dataset.x_test.clone(), extras={})
    other.x_test[0, 0, 0, 0] += 0.5  # one pixel of one test image
    assert data_hash(make_split(other, "class:3", seed=0)) != data_hash(base)
    assert data_hash(base.subset(100, 50)) != data_hash(base)  # a subset is other data


def _entry(cache: ModelCache, parts: dict, seed: int) -> str:
    from mixunlearn.models import build_model

    key = cache.key(parts)
    cache.save(key, build_model("digits_cnn", datasets.get_info("digits"), seed=seed),
               {"parts": parts, "seconds": 1.0})
    return key


@pytest.mark.parametrize("swapped", ["both files", "weights only"])
def test_a_pool_member_swapped_for_another_members_files_is_refused(swapped, digits_dataset, tmp_path):
    from mixunlearn.models import build_model
    from mixunlearn.pools import pool_cache_parts

    data = make_split(digits_dataset, "data:5-9:0.4", seed=0)
    cache = ModelCache(tmp_path / "models")
    recipe = training.get_recipe("digits")
    key_a = _entry(cache, pool_cache_parts(data, "digits_cnn", recipe, 11), 11)
    key_b = _entry(cache, pool_cache_parts(data, "digits_cnn", recipe, 12), 12)
    (wa, ma), (wb, mb) = cache.paths(key_a), cache.paths(key_b)
    assert cache.load(key_a, build_model("digits_cnn", data.info))[0] is not None  # intact: loads
    wa.write_bytes(wb.read_bytes())
    if swapped == "both files":
        ma.write_text(mb.read_text())
    meta, problem = cache.load(key_a, build_model("digits_cnn", data.info))
    assert meta is None and problem
    assert ("another entry" if swapped == "both files" else "not the ones its metadata names") in problem
    assert not wa.exists()  # removed, so it is rebuilt


# =========================================================================== R3.2 bombs and sparse files

_BOMB_SCRIPT = textwrap.dedent("""
    import json, resource, sys
    from mixunlearn.datasets import CorruptDataError, read_idx
    with open("/proc/self/status") as fh:
        vm = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmSize:"))
    limit = vm + (1 << 30)  # 1 GiB beyond what the imports took
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    out = {}
    for path in sys.argv[1:]:
        try:
            read_idx(path)
            out[path] = "read"
        except CorruptDataError as exc:
            out[path] = "refused: " + str(exc)
        except MemoryError:
            out[path] = "MemoryError"
    print(json.dumps(out))
""")


def _idx_header(dims: tuple[int, ...]) -> bytes:
    return struct.pack(">BBBB", 0, 0, 8, len(dims)) + struct.pack(">" + "I" * len(dims), *dims)


def _gzip_bomb(path: Path, header: bytes, gib: int = 3) -> Path:
    """``header`` then ``gib`` GiB of zeros, gzip-compressed (about 3 MB): one compressed 64 MiB
    member repeated (a multi-member gzip stream reads as one)."""
    zeros = gzip.compress(b"\0" * (64 << 20), compresslevel=9)
    with open(path, "wb") as fh:
        fh.write(gzip.compress(header))
        for _ in range(gib * 16):
            fh.write(zeros)
    return path


def test_gzip_bombs_and_huge_sparse_files_are_refused_without_allocating(tmp_path):
    cases = {
        "bomb after a small header": (_gzip_bomb(tmp_path / "a.gz", _idx_header((10, 28, 28))),
                                      "more data than its header declares"),
        "bomb with a huge header": (_gzip_bomb(tmp_path / "b.gz", _idx_header((4_000_000, 28, 28)), 1),
                                    "more than the"),
    }
    for name, header, message in (("sparse garbage", b"GARB", "wrong magic number"),
                                  ("sparse, huge header", _idx_header((54_000_000, 28, 28)), "more than the")):
        path = tmp_path / name.replace(" ", "_").replace(",", "")
        with open(path, "wb") as fh:
            fh.write(header)
        os.truncate(path, 40 << 30)  # 40 GiB, no blocks on disk
        cases[name] = (path, message)
    assert (tmp_path / "a.gz").stat().st_size < 5 << 20
    proc = subprocess.run([sys.executable, "-c", _BOMB_SCRIPT, *(str(p) for p, _ in cases.values())],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    for name, (path, message) in cases.items():
        assert out[str(path)].startswith("refused: ") and message in out[str(path)], (name, out[str(path)])
        assert str(path) in out[str(path)]  # the file is named


def test_a_bomb_in_a_data_folder_is_one_line_naming_the_file(capsys, tmp_path):
    folder = idx_folder(tmp_path / "d")
    _gzip_bomb(folder / "t10k-labels-idx1-ubyte.gz", _idx_header((20,)), 1)
    line = one_error_line(*cli(["run", "--dataset", "mnist", "--data-root", str(folder), "--no-download",
                                "--out", str(tmp_path / "o")], capsys)[::2])
    assert "t10k-labels-idx1-ubyte.gz" in line and "more data than its header declares" in line


# =========================================================================== R3.3 / R3.4 Ray


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # the server's own log would mix with the CLI's stderr
        pass


class _Silent(threading.Thread):
    """A port that accepts connections and never answers."""

    def __init__(self):
        super().__init__(daemon=True)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []

    def run(self):
        while True:
            try:
                self.conns.append(self.sock.accept()[0])
            except OSError:
                return


@pytest.mark.parametrize("server", ["http", "silent"])
def test_ray_at_an_address_where_something_else_listens_is_one_line_within_the_timeout(server, capsys, tmp_path,
                                                                                     monkeypatch):
    pytest.importorskip("ray")
    if server == "http":
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _QuietHandler)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        port, stop = httpd.server_address[1], httpd.shutdown
    else:
        silent = _Silent()
        silent.start()
        port, stop = silent.port, silent.sock.close
    monkeypatch.setenv("MIXUNLEARN_RAY_TIMEOUT", "3")
    result = {}

    def go():
        result["value"] = cli(["bench", "--ray", f"127.0.0.1:{port}", "--methods", "retrain", "--seeds", "0",
                               "--out", str(tmp_path / "o")], capsys)

    worker = threading.Thread(target=go, daemon=True)
    worker.start()
    worker.join(25)  # a deadline, not a speed test: the old code waited here for minutes
    stop()
    assert not worker.is_alive(), "--ray waited on something that is not a Ray cluster"
    rc, _, err = result["value"]
    line = one_error_line(rc, err)
    assert f"127.0.0.1:{port}" in line and "does not answer as a Ray cluster within 3 s" in line


def test_threads_above_every_nodes_cpus_are_refused_before_any_cell(capsys, tmp_path, monkeypatch):
    ray = pytest.importorskip("ray")
    from mixunlearn import ray_grid

    started = []
    monkeypatch.setattr(ray_grid, "connect", lambda address: False)  # as if already connected
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True, "Resources": {"CPU": 2.0}},
                                               {"Alive": False, "Resources": {"CPU": 64.0}}])
    monkeypatch.setattr(ray_grid, "run_grid_ray", lambda *a, **k: started.append(k) or [])
    args = ["bench", "--ray", "local", "--methods", "retrain", "--seeds", "0", "--out", str(tmp_path / "o")]
    line = one_error_line(*cli(args + ["--threads", "4"], capsys)[::2])
    assert "--threads 4" in line and "has 2" in line and "--threads 2 or less" in line and started == []
    rc, _, err = cli(args + ["--threads", "2"], capsys)
    assert rc == 0 and len(started) == 1 and started[0]["threads"] == 2, err


# =========================================================================== R3.5 resume checks each record


EDITS = {
    "empty metrics": lambda d: d["methods"]["finetune"].update(metrics={}),
    "a metric of 1e6": lambda d: d["methods"]["finetune"]["metrics"].update(test_r=1e6),
    "a NaN metric": lambda d: d["methods"]["finetune"]["metrics"].update(test_f=math.nan),
    "metrics null": lambda d: d["methods"]["finetune"].update(metrics=None),
    "the original's metrics null": lambda d: d["original"].update(metrics=None),
    "another data set's fingerprint": lambda d: d["info"].update(data_hash="0" * 20),
}


def test_resume_reruns_each_record_that_fails_validation_and_says_which(tiny, tmp_path, monkeypatch):
    cfg = ExperimentConfig(dataset="digits", forget="class:3", methods=("retrain", "finetune"), seed=0,
                           recipe=tiny, device="cpu", attacks=False, params={"finetune": {"epochs": 1}})
    out = tmp_path / "grid"
    bench.run_bench([cfg], out)
    seed0 = out / "seed0.json"
    good = json.loads(seed0.read_text())
    ran: list[tuple[str, ...]] = []
    real = bench.run_experiment
    monkeypatch.setattr(bench, "run_experiment", lambda c, **k: ran.append(c.methods) or real(c, **k))
    said: list[str] = []
    bench.run_bench([cfg], out, callbacks=[lambda ev: said.append(ev.message)])
    assert ran == [] and any("every method done" in s for s in said)  # an intact file is reused
    for name, edit in EDITS.items():
        doc = json.loads(seed0.read_text())
        edit(doc)
        seed0.write_text(json.dumps(doc))  # json writes NaN as NaN, as an editor might
        ran.clear()
        said.clear()
        table = bench.run_bench([cfg], out, callbacks=[lambda ev: said.append(ev.message)])
        assert ran == [("retrain", "finetune")], name  # run again (Retrain from the cache)
        whole = name.startswith(("the original", "another"))
        assert any(("original's record is invalid" if name.startswith("the original") else
                    "other data" if whole else "finetune's record is invalid") in s for s in said), (name, said)
        fixed = json.loads(seed0.read_text())
        assert bench.record_problem(fixed["methods"]["finetune"], cfg, "class") is None, name
        assert "finetune" in table and set(fixed["methods"]["finetune"]["metrics"]) == set(
            good["methods"]["finetune"]["metrics"])


# =========================================================================== R3.6 / R3.8 store and models


def test_a_failed_store_commit_keeps_the_finished_runs_results(tiny, capsys, tmp_path, monkeypatch):
    def unwritable(self, run_id, *a, **k):
        raise PermissionError(13, "Permission denied", str(self.runs_dir / f"{run_id}.partial"))

    monkeypatch.setattr(RunStore, "commit", unwritable)
    rc, out, err = cli(["run", "--recipe", tiny, "--methods", "retrain", "--no-attacks", "--store", "--quiet",
                        "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    results = tmp_path / "o" / "results.json"
    assert results.is_file() and json.loads(results.read_text())["methods"]["retrain"]["status"] == "done"
    assert "finished but could not be stored" in last and "Permission denied" in last and str(results) in last
    assert "retrain" in out  # the summary was printed
    (run,) = RunStore().list_runs(status=None)
    assert run.status == "failed" and "could not be stored" in run.error


@pytest.mark.parametrize("folder", ["models", "store/runs"])
def test_unwritable_models_or_store_folders_are_refused_before_any_work(folder, no_work, capsys, tmp_path):
    home = Path(os.environ["MIXUNLEARN_HOME"])
    (home / folder).parent.mkdir(parents=True, exist_ok=True)
    (home / folder).symlink_to(_unwritable_dir(), target_is_directory=True)
    line = one_error_line(*cli(["run", "--store", "--out", str(tmp_path / "o")], capsys)[::2])
    assert "MIXUNLEARN_HOME" in line and f"its {folder} folder" in line and "no file can be written" in line
    assert not (tmp_path / "o").exists()


def test_a_model_cache_that_cannot_be_written_after_training_is_a_message_not_a_lost_model(tiny, digits_dataset,
                                                                                          tmp_path):
    link = tmp_path / "models"
    link.symlink_to(_unwritable_dir(), target_is_directory=True)
    data = make_split(digits_dataset, "class:3", seed=0)
    said = []
    trained = training.get_trained("original", data, "digits_cnn", TINY, callbacks=[lambda ev: said.append(ev)],
                                   cache=ModelCache(link))
    assert not trained.cached and trained.model is not None
    msgs = [e.message for e in said if e.phase == "cache"]
    assert any(f"the model cache at {link} cannot be written" in m and "used without being cached" in m
               for m in msgs), msgs
    assert not any(".tmp" in m for m in msgs)


# =========================================================================== R3.8 an explicit --data-root


def _loop(root: Path) -> Path:
    (root / "l1").symlink_to(root / "l2")
    (root / "l2").symlink_to(root / "l1")
    return root / "l1"


ROOTS = {
    "empty folder": (lambda root: (root / "empty").mkdir() or root / "empty", "holds no usable files"),
    "FIFO": (lambda root: os.mkfifo(root / "fifo") or root / "fifo", "is a FIFO, not a folder"),
    "loop of links": (_loop, "a link that leads nowhere"),
}


@pytest.mark.parametrize("case", list(ROOTS))
def test_an_explicit_data_root_without_files_is_refused_not_replaced_by_another_copy(case, tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "DEBIAN_FASHION_MNIST", idx_folder(tmp_path / "debian"))
    make, message = ROOTS[case]
    root = make(tmp_path)
    with pytest.raises(DataNotFoundError) as err:
        load_dataset("fashion_mnist", data_root=root, download=False)
    assert message in str(err.value) and str(root) in str(err.value) and "\n" not in str(err.value)
    assert datasets.locate("fashion_mnist", root) is None
    # without a data root the copy is used, as before
    assert load_dataset("fashion_mnist", download=False).source == str(tmp_path / "debian")


def test_an_explicit_data_root_fifo_is_one_line_in_the_cli(capsys, tmp_path, monkeypatch):
    def started(*args, **kwargs):
        raise AssertionError("the run started")

    monkeypatch.setattr(experiment, "run_experiment", started)
    os.mkfifo(tmp_path / "fifo")
    rc, _, err = cli(["run", "--dataset", "fashion_mnist", "--data-root", str(tmp_path / "fifo"), "--no-download",
                      "--out", str(tmp_path / "o")], capsys)
    assert "is a FIFO, not a folder" in one_error_line(rc, err)


# =========================================================================== R3.8 evaluate's estimate


def test_evaluate_prints_an_estimate_first_and_stops_with_estimate_only(capsys, tmp_path, monkeypatch):
    fake = strong_eval.EvalEstimate(125.0, {"original": 20.0, "reference pool": 100.0, "measurements": 5.0}, 3, 0,
                                    1, {})
    monkeypatch.setattr(strong_eval, "estimate_evaluation", lambda cfg, data=None, cache=None: fake)

    def started(*a, **k):
        raise AssertionError("the evaluation ran")

    monkeypatch.setattr(strong_eval, "run_strong_evaluation", started)
    rc, out, err = cli(["evaluate", "--pool", "3", "--methods", "retrain", "--estimate-only", "--out",
                        str(tmp_path / "o")], capsys)
    assert rc == 0, err
    assert "[estimate] about 2 min 05 s (3 retrained models to train, 0 cached)" in err and "reference pool" in err
    assert not (tmp_path / "o").exists()


# =========================================================================== R3.8 wording


def test_a_data_file_this_user_may_not_read_is_not_called_corrupt(tmp_path, monkeypatch):
    folder = idx_folder(tmp_path / "d")

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied", str(a[0]))

    monkeypatch.setattr(datasets.gzip, "open", denied)  # root reads any file: the denial is simulated
    with pytest.raises(CorruptDataError) as err:
        read_idx(folder / "train-labels-idx1-ubyte.gz")
    assert "permission denied" in str(err.value) and "corrupt" not in str(err.value)


def test_a_read_only_store_is_not_called_unreadable(tmp_path, monkeypatch):
    import sqlite3

    from mixunlearn import store as store_module
    from mixunlearn.store import StoreError

    store = RunStore(tmp_path / "store")
    real = sqlite3.connect
    # root writes any file: the store's database is opened read-only by SQLite itself instead
    monkeypatch.setattr(store_module.sqlite3, "connect",
                        lambda path, **kw: real(f"file:{path}?mode=ro", uri=True, **kw))
    with pytest.raises(StoreError) as err:
        store.begin({"dataset": "digits"})
    text = str(err.value)
    assert "cannot be written" in text and "read-only" in text and "unreadable" not in text


def test_a_server_shutdown_is_not_called_a_cancel():
    runner = jobs.JobRunner()
    begun = threading.Event()

    def work(job):
        begun.set()
        deadline = time.time() + 60
        while time.time() < deadline:
            job.raise_if_cancelled()
            time.sleep(0.01)
        return None

    job = runner.submit(work, label="long", kind="test", gpu=False)
    assert begun.wait(30)
    runner.shutdown(timeout=30)
    assert job.state == jobs.CANCELLED
    assert job.message == "stopped: the app's server shut down"
    assert "server shut down" in job.error and "cancelled" not in job.error.lower()


# =========================================================================== R3.8 concurrent write checks


def test_concurrent_checks_of_one_new_folder_never_refuse(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from mixunlearn.utils import check_writable_dir

    failures: list[str] = []

    def check(i: int) -> None:
        try:
            check_writable_dir(tmp_path / f"new{i // 400}" / "a" / "b", "--out")
        except ValueError as exc:
            failures.append(str(exc))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(check, range(2400)))
    assert failures == []
    assert sorted(p.name for p in tmp_path.iterdir() if any(p.rglob(".write-test*"))) == []  # no probe left


def test_the_cache_format_needs_no_pickle(tmp_path):
    """The new cache metadata (parts, weights hash) is plain JSON next to safetensors."""
    cache = ModelCache(tmp_path)
    from mixunlearn.models import build_model

    key = _entry(cache, {"kind": "original", "x": 1}, 0)
    meta = json.loads(cache.paths(key)[1].read_text())
    assert meta["parts"] == {"kind": "original", "x": 1} and len(meta["weights_sha256"]) == 64
    assert cache.load(key, build_model("digits_cnn", datasets.get_info("digits")))[0] is not None
