"""Hardening round 2 (issue 13), library and command-line cases (docs/hardening.md, "Round 2 (issue
13): library and CLI"): class ranges checked in O(input size), an unwritable --out refused before any
work, the seed range that every consumer accepts, repeated seeds, an unusable MIXUNLEARN_HOME, atomic
writes under concurrent writers, runs of a killed process marked interrupted, repeated and over-long
--param values.

"Before any work" is enforced, not assumed: where a check must come first, the work it guards
(loading the data, running the experiment or the grid) is replaced by a function that fails the
test if it is called."""

from __future__ import annotations

import json
import multiprocessing
import os
import resource
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import tracemalloc
from pathlib import Path

import pytest
import torch
from test_cli import run_cli
from test_hardening import cli, one_error_line

from mixunlearn import bench, experiment
from mixunlearn import cli as cli_module
from mixunlearn.data import parse_forget_spec
from mixunlearn.experiment import ExperimentConfig, ExperimentResult, MethodRecord
from mixunlearn.store import RunStore

ROOT = Path(__file__).resolve().parents[1]
SEED_MAX = 2**32 - 1
HUGE = "9" * 5000  # more digits than int() converts (4300) and far more than any message may echo


@pytest.fixture
def no_work(monkeypatch):
    """Every entry into real work fails the test: the data set load, the experiment, the grid."""
    def started(*args, **kwargs):
        raise AssertionError("work started although the input was bad")

    monkeypatch.setattr(experiment, "prepare_data", started)
    monkeypatch.setattr(experiment, "run_experiment", started)
    monkeypatch.setattr(bench, "run_bench", started)
    monkeypatch.setattr(cli_module, "_check_data", started)


def refused(command_args, capsys, expected_rc=2) -> str:
    """Run the CLI in this process; the one error line (exit 2, no traceback, no progress line)."""
    rc, out, err = cli(command_args, capsys)
    line = one_error_line(rc, err, expected_rc)
    assert "[experiment]" not in err and "Traceback" not in err
    return line


# =========================================================================== 1. class ranges: O(input size)


@pytest.mark.parametrize("spec", ["class:0-3000000", "data:5-3000000:0.4", "noisy:3,0-3000000:0.5"])
def test_class_range_is_checked_before_it_is_built(spec):
    # The old parser expanded the range into a set first (class:0-20000000: 8 s and 2.4 GB); here
    # a 3-million range would take ~150 MB. Checking it must cost next to nothing.
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"class 10 is out of range .*classes 0\.\.9"):
            parse_forget_spec(spec, 10)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000, f"checking {spec!r} allocated {peak} bytes"


def test_class_range_without_a_dataset_is_bounded_too():
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="no data set has more than 100000 classes"):
            parse_forget_spec("class:0-3000000")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000
    assert parse_forget_spec("class:2-4").classes == (2, 3, 4)  # ordinary ranges still work


@pytest.mark.parametrize("spec, shown", [
    ("class:3," + HUGE, "class 999"),
    ("class:-" + HUGE + "-3", "is negative"),
    ("data:5-" + HUGE + ":0.4", "class 10 is out of range"),
], ids=["huge class", "huge negative class", "huge range end"])
def test_class_numbers_with_thousands_of_digits_are_refused_and_not_echoed(spec, shown):
    with pytest.raises(ValueError) as err:
        parse_forget_spec(spec, 10)
    message = str(err.value)
    assert shown in message and "0..9" in message
    assert len(message) < 400 and "\u2026" in message  # the spec and the number are cut, with an ellipsis


def test_class_range_of_the_issue_is_one_line_at_once_in_a_real_process(tmp_path):
    # class:10-99999999999999999 used to hang while memory grew without bound. The address-space
    # limit turns such a regression into a quick failure instead of a machine out of memory.
    def limit_memory():
        resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))

    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "MIXUNLEARN_HOME": str(tmp_path / "h")}
    res = subprocess.run([sys.executable, "-m", "mixunlearn", "run", "--forget", "class:10-99999999999999999",
                          "--out", str(tmp_path / "o")], capture_output=True, text=True, env=env, timeout=120,
                         cwd=ROOT, preexec_fn=limit_memory)
    assert res.returncode == 2, res.stderr[-500:]
    line = one_error_line(res.returncode, res.stderr)
    assert "class 10 is out of range" in line and "0..9" in line
    assert not (tmp_path / "o").exists()


def test_class_range_of_the_issue_is_one_line_in_the_cli(capsys, no_work, tmp_path):
    refused(["run", "--forget", "class:3", "--out", str(tmp_path / "o")], capsys, expected_rc=1)  # imports done
    tracemalloc.start()
    try:
        line = refused(["run", "--forget", "class:0-20000000", "--out", str(tmp_path / "o")], capsys)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "class 10 is out of range in forget spec 'class:0-20000000'" in line and "0..9" in line
    assert peak < 20_000_000, f"the check allocated {peak} bytes (was 2.4 GB)"


# =========================================================================== 2. an unwritable --out


def _under_a_file(tmp_path: Path) -> Path:
    (tmp_path / "a_file").write_text("x")
    return tmp_path / "a_file" / "out"


def _results_json_is_a_folder(tmp_path: Path) -> Path:
    (tmp_path / "out" / "results.json").mkdir(parents=True)
    return tmp_path / "out"


OUTS = {"under a file": (_under_a_file, "is a file, not a folder"),
        "under /proc": (lambda tmp_path: Path("/proc/mixunlearn-no-such/out"), "cannot be written"),
        "results.json is a folder": (_results_json_is_a_folder, "is a folder")}


@pytest.mark.parametrize("command", ["run", "bench"])
@pytest.mark.parametrize("where", list(OUTS))
def test_unwritable_out_is_refused_before_any_work(command, where, capsys, no_work, tmp_path):
    make, message = OUTS[where]
    if command == "bench" and where == "results.json is a folder":
        (tmp_path / "out" / "table.md").mkdir(parents=True)  # bench's own output file
        out = tmp_path / "out"
    else:
        out = make(tmp_path)
    store = ["--store"] if command == "run" else []
    line = refused([command, "--methods", "retrain", *store, "--out", str(out)], capsys)
    assert "--out" in line and str(out) in line and message in line
    assert RunStore().list_runs(status=None) == []  # no run registered, so none marked failed


def test_checking_out_leaves_no_folder_behind(tmp_path, capsys, monkeypatch):
    def fails(cfg, callbacks=None, **kw):
        raise ValueError("the experiment failed")

    monkeypatch.setattr(experiment, "run_experiment", fails)
    out = tmp_path / "new" / "deeper"
    rc, _, err = cli(["run", "--methods", "retrain", "--out", str(out)], capsys)
    # The failure comes after the time estimate (printed once the data is ready): that line, then one error.
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 2 and lines[0].startswith("[estimate] about "), err
    assert "the experiment failed" in lines[1] and "Traceback" not in err
    assert not (tmp_path / "new").exists()  # the write test made and removed both folders


# =========================================================================== 3. seeds


@pytest.mark.parametrize("seed", ["4294967296", "9223372036854775808", "18446744073709551616", HUGE],
                         ids=["2**32", "2**63", "2**64", "5000 digits"])
def test_seed_out_of_range_is_refused_before_any_work_naming_the_seed(seed, capsys, no_work, tmp_path):
    line = refused(["run", "--seed", seed, "--store", "--out", str(tmp_path / "o")], capsys)
    assert "--seed" in line and f"seed {seed[:20]}" in line and "0..4294967295" in line
    assert len(line) < 300  # a 5000-digit seed is cut, not echoed
    line = refused(["bench", "--seeds", f"0,{seed}", "--out", str(tmp_path / "o")], capsys)
    assert "--seeds" in line and f"seed {seed[:20]}" in line and "0..4294967295" in line
    assert not (tmp_path / "o").exists()


def test_the_seed_range_fits_every_consumer(tmp_path):
    from mixunlearn.metrics import attack_success_rate, mia_efficacy
    from mixunlearn.utils import SEED_MAX as LIBRARY_MAX
    from mixunlearn.utils import check_seed, seed_everything

    assert LIBRARY_MAX == cli_module.SEED_MAX == SEED_MAX
    parser = cli_module.build_parser()
    assert parser.parse_args(["run", "--seed", str(SEED_MAX)]).seed == SEED_MAX
    # The largest seed works in each consumer: the attacks (scikit-learn's random_state), NumPy,
    # torch (methods derive seeds such as seed * 7919 + 104729), the run store (SQLite int64).
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(80, 3, generator=g), dim=1)
    assert 0.0 <= attack_success_rate(probs[:30], probs[30:40], probs[40:], SEED_MAX) <= 100.0
    assert 0.0 <= mia_efficacy(probs[:30, 0], probs[40:, 0], probs[30:40, 0], SEED_MAX) <= 100.0
    seed_everything(SEED_MAX)
    torch.Generator().manual_seed(SEED_MAX * 7919 + 104729)
    store = RunStore(tmp_path / "store")
    assert store.get(store.begin({"dataset": "digits", "seed": SEED_MAX})).seed == SEED_MAX
    # One above it fails in the attack, so the range is not narrower than it must be either.
    with pytest.raises(ValueError):
        attack_success_rate(probs[:30], probs[30:40], probs[40:], SEED_MAX + 1)
    for bad in (SEED_MAX + 1, 2**63, 2**64, -1):
        with pytest.raises(ValueError, match="seed"):
            check_seed(bad)
        with pytest.raises(ValueError, match="seed"):
            seed_everything(bad)  # run_experiment seeds first: refused before the data is loaded


def test_the_store_refuses_an_out_of_range_seed_with_a_message(tmp_path):
    store = RunStore(tmp_path)
    with pytest.raises(ValueError, match=r"seed 9223372036854775808 is out of range"):  # was OverflowError
        store.begin({"dataset": "digits", "forget": "class:3", "seed": 2**63})
    assert store.list_runs(status=None) == []


# =========================================================================== 4. repeated seeds


@pytest.mark.parametrize("seeds, repeated", [("0,0", "0"), ("1,2,1", "1"), ("3, 3", "3")])
def test_bench_refuses_a_repeated_seed(seeds, repeated, capsys, no_work, tmp_path):
    line = refused(["bench", "--seeds", seeds, "--out", str(tmp_path / "o")], capsys)
    assert f"seed {repeated} is given more than once" in line and "--seeds" in line
    assert not (tmp_path / "o").exists()


def test_run_bench_refuses_a_repeated_seed_before_running(monkeypatch, tmp_path):
    def started(*args, **kwargs):
        raise AssertionError("an experiment ran")

    monkeypatch.setattr(bench, "run_experiment", started)
    cfg = ExperimentConfig(methods=("retrain",), seed=0)
    with pytest.raises(ValueError, match="seed 0 is given more than once"):
        bench.run_bench([cfg, cfg], tmp_path / "grid")
    assert not (tmp_path / "grid").exists()


# =========================================================================== 5. an unusable MIXUNLEARN_HOME


def _home_is_a_file(tmp_path):
    (tmp_path / "home_file").write_text("x")
    return tmp_path / "home_file"


def _home_under_a_file(tmp_path):
    (tmp_path / "home_file").write_text("x")
    return tmp_path / "home_file" / "home"


def _home_store_is_a_file(tmp_path):
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "store").write_text("x")
    return tmp_path / "home"


HOMES = {"a file": (_home_is_a_file, "it is a file, not a folder"),
         "under a file": (_home_under_a_file, "cannot be created"),
         "its store is a file": (_home_store_is_a_file, "store is a file, not a folder")}


@pytest.mark.parametrize("home", list(HOMES))
def test_check_home_names_mixunlearn_home(home, tmp_path, monkeypatch):
    from mixunlearn.utils import HomeError, check_home

    make, why = HOMES[home]
    path = make(tmp_path)
    monkeypatch.setenv("MIXUNLEARN_HOME", str(path))
    with pytest.raises(HomeError) as err:
        check_home()
    message = str(err.value)
    assert isinstance(err.value, ValueError) and "\n" not in message
    assert message.startswith(f"MIXUNLEARN_HOME={path} is not usable") and why in message
    monkeypatch.setenv("MIXUNLEARN_HOME", str(tmp_path / "good"))
    assert check_home() == tmp_path / "good" and (tmp_path / "good").is_dir()


@pytest.mark.parametrize("home", list(HOMES))
@pytest.mark.parametrize("command", [["run", "--store"], ["bench"]])
def test_cli_refuses_an_unusable_home_before_any_work(home, command, tmp_path, monkeypatch, capsys, no_work):
    make, why = HOMES[home]
    monkeypatch.setenv("MIXUNLEARN_HOME", str(make(tmp_path)))
    line = refused([*command, "--methods", "retrain", "--out", str(tmp_path / "o")], capsys)
    assert "MIXUNLEARN_HOME=" in line and why in line and "Errno" not in line


def test_an_unusable_home_is_one_line_in_a_real_process(tmp_path):
    home = _home_is_a_file(tmp_path)
    res = run_cli(["run", "--methods", "retrain", "--out", str(tmp_path / "o")], env={"MIXUNLEARN_HOME": str(home)},
                  timeout=120)
    line = one_error_line(res.returncode, res.stderr)
    assert "MIXUNLEARN_HOME=" in line and "is a file" in line and "[experiment]" not in res.stderr


# =========================================================================== 6. atomic writes, concurrent writers


def _result_doc(writer: int) -> ExperimentResult:
    rec = MethodRecord("retrain", "Retrain", "aware", "done", {"test_r": 90.0 + writer}, 1.0, 0.0)
    return ExperimentResult(ExperimentConfig(seed=writer), rec, {"retrain": rec},
                            info={"writer": writer, "pad": str(writer) * 40_000})


def _writer(kind: str, folder: str, writer: int, start, seconds: float) -> None:
    result = _result_doc(writer)
    doc = result.to_json()
    start.wait()  # every writer and the reader begin together
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if kind == "results.json":
            result.write(folder)
        else:
            bench._write(Path(folder) / "seed0.json", doc)


@pytest.mark.parametrize("kind, name", [("results.json", "results.json"), ("seed file", "seed0.json")])
def test_concurrent_writers_leave_one_complete_file_and_readers_never_see_a_part(kind, name, tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    if kind == "results.json":
        _result_doc(9).write(folder)
    else:
        bench._write(folder / name, _result_doc(9).to_json())
    ctx = multiprocessing.get_context("fork")  # the children need nothing but the already imported code
    start = ctx.Barrier(4)
    procs = [ctx.Process(target=_writer, args=(kind, str(folder), w, start, 1.5)) for w in range(3)]
    for p in procs:
        p.start()
    reads, seen = 0, set()
    try:
        start.wait(timeout=60)
        while any(p.is_alive() for p in procs):
            doc = json.loads((folder / name).read_text())  # never empty, never a part (not valid JSON)
            w = doc["info"]["writer"]
            assert doc["info"]["pad"] == str(w) * 40_000 and doc["methods"]["retrain"]["metrics"]["test_r"] == 90 + w
            reads += 1
            seen.add(w)
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    assert [p.exitcode for p in procs] == [0, 0, 0]  # no writer failed (with one shared .tmp name they did)
    assert reads > 0 and seen & {0, 1, 2}
    assert json.loads((folder / name).read_text())["info"]["writer"] in (0, 1, 2)
    assert sorted(p.name for p in folder.iterdir()) == [name]  # no temporary file stays behind


def test_atomic_write_removes_its_temporary_file_when_the_write_fails(tmp_path, monkeypatch):
    from mixunlearn.utils import atomic_write_text

    atomic_write_text(tmp_path / "a.json", "old")

    def broken(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(OSError, match="No space left"):
        atomic_write_text(tmp_path / "a.json", "new")
    assert (tmp_path / "a.json").read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.json"]


# =========================================================================== 7. runs of a killed process


_KILLED_RUN = textwrap.dedent("""
    import sys, time
    import mixunlearn.experiment as experiment
    from mixunlearn.cli import main

    def hang(cfg, callbacks=None, **kw):
        print("RUNNING", flush=True)
        time.sleep(300)

    experiment.run_experiment = hang
    main(["run", "--methods", "retrain", "--store", "--quiet", "--out", sys.argv[1]])
""")


def test_a_run_of_a_cli_killed_with_sigkill_is_marked_interrupted_by_the_next_cli(tmp_path, capsys, monkeypatch):
    script = tmp_path / "killed.py"
    script.write_text(_KILLED_RUN)
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "o1")], stdout=subprocess.PIPE,
                            text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "RUNNING"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    [killed] = RunStore().list_runs(status=None)
    assert killed.status == "running"  # nobody has opened the store since

    def fails(cfg, callbacks=None, **kw):
        raise ValueError("the next run failed on purpose")

    monkeypatch.setattr(experiment, "run_experiment", fails)
    rc, out, err = cli(["run", "--methods", "retrain", "--store", "--quiet", "--out", str(tmp_path / "o2")], capsys)
    assert rc == 2, err
    run = RunStore().get(killed.id)
    assert run.status == "interrupted"
    assert f"pid {proc.pid}" in run.error and "killed or crashed" in run.error
    assert run.finished is not None


def test_recover_records_why_a_run_was_interrupted(tmp_path):
    store = RunStore(tmp_path)
    run_id = store.begin({"dataset": "digits", "forget": "class:3", "seed": 0})
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    with sqlite3.connect(store.db_path) as con:
        con.execute("UPDATE runs SET pid = ? WHERE id = ?", (gone.pid, run_id))
    assert store.recover() == [run_id]
    run = store.get(run_id)
    assert run.status == "interrupted" and run.error.startswith("interrupted:") and f"pid {gone.pid}" in run.error


# =========================================================================== 11. --param: repeated keys, long values


@pytest.mark.parametrize("command", ["run", "bench"])
@pytest.mark.parametrize("values", [("0.1", "0.2"), ("0.1", "0.1")])
def test_a_repeated_param_key_is_an_error(command, values, capsys, no_work, tmp_path):
    line = refused([command, "--methods", "retrain,finetune", "--param", f"finetune.lr={values[0]}",
                    "--param", f" finetune.lr = {values[1]}", "--out", str(tmp_path / "o")], capsys)
    assert "--param finetune.lr is given twice" in line and values[0] in line


@pytest.mark.parametrize("param, message", [
    ("finetune.epochs=" + "1" * 4000, "FinetuneConfig.epochs = 111"),
    ("finetune.epochs=" + HUGE, "must be an integer"),
    ("finetune.lr=" + "x" * 4000, "must be a number"),
    ("finetune." + "y" * 4000 + "=1", "unknown parameter 'yyy"),
    ("x" * 4000 + ".lr=1", "not in the run"),
    ("finetune" + "z" * 4000, "malformed --param"),
], ids=["4000-digit integer", "5000-digit integer", "long text", "long field name", "long method name",
        "long malformed"])
def test_an_over_long_param_is_cut_in_the_message(param, message, capsys, no_work, tmp_path):
    line = refused(["run", "--methods", "retrain,finetune", "--param", param, "--out", str(tmp_path / "o")], capsys)
    assert message in line and "\u2026" in line and len(line) < 400


def test_experiment_config_refuses_an_out_of_range_seed_before_any_work():
    """The library (and so the app's Unlearn page) checks the seed range in ExperimentConfig.resolved(),
    not only the CLI."""
    from mixunlearn.experiment import ExperimentConfig

    with pytest.raises(ValueError, match="4294967296 is out of range"):
        ExperimentConfig(seed=2**32).resolved()
    assert ExperimentConfig(seed=2**32 - 1).resolved().seed == 2**32 - 1
