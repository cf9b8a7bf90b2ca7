"""The run store: begin/commit/list, atomic commits (a killed writer never leaves a complete run),
recovery, schema checks, unsuccessful runs, artifacts, concurrent writers."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import torch

from mixunlearn.store import RunStore, StoreError

ROOT = Path(__file__).resolve().parents[1]
CONFIG = {"dataset": "digits", "forget": "class:3", "seed": 0, "methods": ["retrain", "finetune"]}


def results(gap=1.5):
    return {"config": CONFIG,
            "methods": {"retrain": {"metrics": {"test_r": 99.0, "test_f": 0.0}, "seconds": 3.0, "status": "done",
                                    "config": {"recipe": "digits"}},
                        "finetune": {"metrics": {"test_r": 98.0, "test_f": 40.0}, "seconds": 1.0,
                                     "gap_to_retrain": gap, "status": "done", "config": {"lr": 0.01}}}}


def test_begin_commit_list(tmp_path):
    store = RunStore(tmp_path / "s")
    run_id = store.begin(CONFIG, label="first")
    assert store.get(run_id).status == "running"
    assert store.list_runs() == []  # running runs are not listed as complete
    w = torch.arange(6.0).view(2, 3)
    store.commit(run_id, results(), tensors={"w": w}, files={"notes.txt": "hello", "raw.bin": b"\x00\x01"})
    runs = store.list_runs()
    assert [r.id for r in runs] == [run_id]
    run = runs[0]
    assert run.status == "complete" and run.label == "first" and run.dataset == "digits" and run.seed == 0
    assert run.config == CONFIG and run.results == results() and run.finished >= run.created
    assert run.methods["finetune"]["gap_to_retrain"] == 1.5
    assert run.methods["finetune"]["metrics"] == {"test_r": 98.0, "test_f": 40.0}
    assert run.methods["retrain"]["config"] == {"recipe": "digits"}
    assert torch.equal(store.load_tensors(run_id)["w"], w)
    assert store.read_file(run_id, "notes.txt") == b"hello" and store.read_file(run_id, "raw.bin") == b"\x00\x01"
    assert "digits" in run.title and "first" in run.title
    with pytest.raises(StoreError, match="not running"):
        store.commit(run_id, results())  # a complete run is never committed twice
    with pytest.raises(StoreError, match="no run"):
        store.get("nope")
    # Another RunStore on the same folder sees the same runs.
    assert [r.id for r in RunStore(tmp_path / "s").list_runs()] == [run_id]


def test_bad_file_names_are_refused(tmp_path):
    store = RunStore(tmp_path)
    run_id = store.begin(CONFIG)
    for bad in ("../evil", ".hidden", "a/b", "", "results.json"):
        with pytest.raises(ValueError, match="bad file name"):
            store.commit(run_id, results(), files={bad: "x"})
    assert store.get(run_id).status == "running"
    assert list(store.runs_dir.iterdir()) == []  # nothing half-written left behind


def test_complete_run_without_its_files_is_not_listed(tmp_path):
    store = RunStore(tmp_path)
    run_id = store.begin(CONFIG)
    store.commit(run_id, results())
    import shutil

    shutil.rmtree(store.runs_dir / run_id)
    assert store.list_runs() == []


def test_delete(tmp_path):
    store = RunStore(tmp_path)
    run_id = store.begin(CONFIG)
    store.commit(run_id, results())
    store.delete(run_id)
    assert store.list_runs(status=None) == [] and not (store.runs_dir / run_id).exists()


# --------------------------------------------------------------------------- killed writers

_WRITER = textwrap.dedent("""
    import os, sys, time
    import mixunlearn.store as st

    where = sys.argv[2]
    store = st.RunStore(sys.argv[1])
    run_id = store.begin({"dataset": "digits", "forget": "class:3", "seed": 0})
    print("RUN", run_id, flush=True)

    def hang(tag):
        print(tag, flush=True)
        time.sleep(120)

    if where == "writing":  # while the files are written, before the rename
        real = st._fsync_dir
        st._fsync_dir = lambda p: (real(p), hang("HANG"))
    elif where == "renamed":  # files in place, status not yet updated
        real_replace = os.replace
        def replace(a, b):
            real_replace(a, b)
            hang("HANG")
        st.os.replace = replace

    class SlowRecord(dict):  # inside the SQLite transaction, after the UPDATE to 'complete'
        def get(self, key, default=None):
            if key == "status" and where == "transaction":
                hang("HANG")
            return super().get(key, default)

    results = {"methods": {"retrain": SlowRecord(metrics={"test_r": 99.0}, seconds=1.0)}}
    store.commit(run_id, results, tensors={"w": __import__("torch").ones(3)}, files={"a.txt": "x" * 100000})
    print("COMMITTED", flush=True)
""")


@pytest.mark.parametrize("where", ["writing", "renamed", "transaction"])
def test_run_killed_mid_commit_is_never_complete(tmp_path, where):
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "s"), where], stdout=subprocess.PIPE,
                            text=True, env=env)
    try:
        run_id = proc.stdout.readline().split()[1]
        assert proc.stdout.readline().strip() == "HANG"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    store = RunStore(tmp_path / "s")  # still readable after the crash
    assert store.list_runs() == []
    run = store.get(run_id)
    assert run.status == "running" and run.results is None and run.methods == {}
    with pytest.raises(StoreError, match="not complete"):
        store.load_tensors(run_id)
    assert store.recover() == [run_id]
    assert store.get(run_id).status == "interrupted"
    assert not (store.runs_dir / f"{run_id}.partial").exists() and not (store.runs_dir / run_id).exists()
    assert store.list_runs() == [] and [r.status for r in store.list_runs(status=None)] == ["interrupted"]
    # The store keeps working: a new run commits normally.
    new = store.begin(CONFIG)
    store.commit(new, results())
    assert [r.id for r in store.list_runs()] == [new]


def test_recover_leaves_live_runs_alone(tmp_path):
    store = RunStore(tmp_path)
    mine = store.begin(CONFIG)  # this process is alive
    dead = store.begin(CONFIG)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    with sqlite3.connect(store.db_path) as con:
        con.execute("UPDATE runs SET pid = ? WHERE id = ?", (gone.pid, dead))
    assert store.recover() == [dead]
    assert store.get(mine).status == "running" and store.get(dead).status == "interrupted"
    assert store.recover() == []


def test_reused_pid_of_another_process_incarnation_is_dead(tmp_path):
    # A restarted app (e.g. in a container) can get the pid of the process that began a run.
    store = RunStore(tmp_path)
    run_id = store.begin(CONFIG)
    mine = store.begin(CONFIG)
    with sqlite3.connect(store.db_path) as con:
        con.execute("UPDATE runs SET owner = 'another-boot:123' WHERE id = ?", (run_id,))
    assert store.recover() == [run_id]
    assert store.get(mine).status == "running"


def test_store_of_the_first_layout_gains_the_owner_column(tmp_path):
    import mixunlearn.store as st

    with sqlite3.connect(tmp_path / "index.sqlite") as con:
        con.executescript(st._SCHEMA)
        con.execute("INSERT INTO meta VALUES ('schema_version', '1')")
        con.execute("INSERT INTO runs (id, created, status, pid, config) VALUES ('old', 1.0, 'running', ?, '{}')",
                    (2**22 + 12345,))  # a pid that does not exist
    store = RunStore(tmp_path)
    assert store.recover() == ["old"] and store.get("old").status == "interrupted"
    run_id = store.begin(CONFIG)
    store.commit(run_id, results())
    assert [r.id for r in store.list_runs()] == [run_id]


def test_zombie_writer_counts_as_dead(tmp_path):
    store = RunStore(tmp_path)
    run_id = store.begin(CONFIG)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        from mixunlearn.store import _process_identity

        with sqlite3.connect(store.db_path) as con:
            con.execute("UPDATE runs SET pid = ?, owner = ? WHERE id = ?",
                        (child.pid, _process_identity(child.pid) or "", run_id))
        assert store.recover() == []  # alive
        child.kill()
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # dead but not reaped: a zombie
        assert store.recover() == [run_id]
    finally:
        child.kill()
        child.wait()


# --------------------------------------------------------------------------- schema and damage


def test_newer_schema_is_refused(tmp_path):
    RunStore(tmp_path)
    with sqlite3.connect(tmp_path / "index.sqlite") as con:
        con.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match="newer MixUnlearn.*schema 99"):
        RunStore(tmp_path)


def test_garbage_database_is_a_store_error(tmp_path):
    tmp_path.joinpath("index.sqlite").write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="unreadable"):
        RunStore(tmp_path)


# --------------------------------------------------------------------------- unsuccessful runs


@pytest.mark.parametrize("status", ["cancelled", "failed"])
def test_finish_unsuccessful(tmp_path, status):
    store = RunStore(tmp_path)
    run_id = store.begin(CONFIG)
    store.finish_unsuccessful(run_id, status, "stopped by the user")
    run = store.get(run_id)
    assert run.status == status and run.error == "stopped by the user" and run.finished is not None
    assert store.list_runs() == []
    with pytest.raises(StoreError, match=status):
        store.commit(run_id, results())
    assert store.get(run_id).status == status and not (store.runs_dir / run_id).exists()
    with pytest.raises(ValueError, match="failed, cancelled or interrupted"):
        store.finish_unsuccessful(run_id, "complete")


def test_finish_unsuccessful_never_downgrades_a_complete_run(tmp_path):
    store = RunStore(tmp_path)
    run_id = store.begin(CONFIG)
    store.commit(run_id, results())
    store.finish_unsuccessful(run_id, "failed", "late error")
    assert store.get(run_id).status == "complete" and (store.runs_dir / run_id / "results.json").is_file()


def test_cancel_during_commit_wins(tmp_path, monkeypatch):
    import mixunlearn.store as st

    store = RunStore(tmp_path)
    run_id = store.begin(CONFIG)
    real = st._fsync_dir

    def cancel_meanwhile(path):
        real(path)
        store.finish_unsuccessful(run_id, "cancelled")

    monkeypatch.setattr(st, "_fsync_dir", cancel_meanwhile)
    with pytest.raises(StoreError, match="cancelled"):
        store.commit(run_id, results())
    assert store.get(run_id).status == "cancelled" and store.get(run_id).methods == {}
    assert store.list_runs() == [] and not (store.runs_dir / run_id).exists()


# --------------------------------------------------------------------------- artifacts


def test_artifacts_save_and_load(tmp_path):
    store = RunStore(tmp_path)
    run_id = store.begin(CONFIG)
    with pytest.raises(StoreError, match="not complete"):
        store.save_artifact(run_id, "umap", {"xy": torch.zeros(2)})
    store.commit(run_id, results())
    xy = torch.randn(5, 2)
    store.save_artifact(run_id, "umap-retrain_1", {"xy": xy, "labels": torch.arange(5)})
    got = store.load_artifact(run_id, "umap-retrain_1")
    assert torch.equal(got["xy"], xy) and torch.equal(got["labels"], torch.arange(5))
    assert store.load_artifact(run_id, "tsne") is None
    (store.runs_dir / run_id / "artifact-tsne.safetensors").write_bytes(b"garbage")
    assert store.load_artifact(run_id, "tsne") is None  # damaged: recomputed by the caller
    for bad in ("../x", "a/b", "a.b", ""):
        with pytest.raises(ValueError, match="bad artifact name"):
            store.save_artifact(run_id, bad, {"xy": xy})
    assert not list((store.runs_dir / run_id).glob(".artifact-*"))  # no temporary files left


# --------------------------------------------------------------------------- concurrency


def test_concurrent_writers_from_two_threads(tmp_path):
    store = RunStore(tmp_path)
    errors, ids = [], []
    lock = threading.Lock()

    def writer(k):
        try:
            own = RunStore(tmp_path) if k else store  # a second store object, as another page would hold
            for i in range(8):
                run_id = own.begin({**CONFIG, "seed": i}, label=f"t{k}")
                own.commit(run_id, results(gap=float(i)), tensors={"w": torch.full((3,), float(i))})
                with lock:
                    ids.append(run_id)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    listed = store.list_runs()
    assert sorted(r.id for r in listed) == sorted(ids) and len(ids) == 16
    assert all(r.status == "complete" and set(r.methods) == {"retrain", "finetune"} for r in listed)
    for r in listed:
        assert float(store.load_tensors(r.id)["w"][0]) == r.methods["finetune"]["gap_to_retrain"]
