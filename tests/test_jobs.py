"""The background job runner: state machine, cancel, concurrency, the GPU queue, failures, and
an experiment job committing to (or staying out of) the run store."""

from __future__ import annotations

import threading
import time

import pytest

from mixunlearn import jobs
from mixunlearn.jobs import (
    CANCELLED,
    CANCELLING,
    DONE,
    FAILED,
    QUEUED,
    RUNNING,
    GpuQueue,
    IllegalTransition,
    Job,
    JobRunner,
)
from mixunlearn.progress import NonFiniteLossError, ProgressEvent, RunCancelled


def _until(condition, what: str, timeout: float = 10.0) -> None:
    """Wait until ``condition()`` holds, failing after ``timeout`` seconds: tests wait on the state
    they need, never on a fixed sleep that a loaded machine can outrun."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting until {what}"
        time.sleep(0.005)


def _steps(job: Job, n: int, delay: float = 0.005, source: str = "m") -> int:
    for i in range(1, n + 1):
        time.sleep(delay)
        job.callback(ProgressEvent(source, "unlearn", i, n, losses={"loss": 1.0 / i}))
    return n


@pytest.fixture
def runner():
    return JobRunner(gpu_queue=GpuQueue())


def test_state_machine_allows_only_listed_transitions():
    for start, allowed in jobs.TRANSITIONS.items():
        for target in jobs.STATES:
            job = Job("j", "t", "k", False)
            job._state = start
            if target in allowed:
                job._transition(target)
                assert job.state == target
            else:
                with pytest.raises(IllegalTransition):
                    job._transition(target)
    # Final states are final.
    assert all(not jobs.TRANSITIONS[s] for s in jobs.FINAL_STATES)


def test_done_job_goes_queued_running_done_and_keeps_its_result(runner):
    gate = threading.Event()

    def fn(job):
        gate.wait(5)
        return _steps(job, 5)

    job = runner.submit(fn, label="ok")
    _until(lambda: job.state != QUEUED, "the job left the queue")
    assert job.state == RUNNING  # and stays there until the gate opens
    gate.set()
    assert job.wait(10)
    assert job.state == DONE and job.result == 5
    assert job.history_of_states == [QUEUED, RUNNING, DONE]
    view = job.view()
    assert view.final and view.latest["m"]["step"] == 5
    assert [p["step"] for p in view.history["m"]] == [1, 2, 3, 4, 5]
    # Done is final: cancel is refused, restarting is illegal.
    assert job.cancel() is False
    with pytest.raises(IllegalTransition):
        runner.start(job, fn)


def test_cancel_is_honoured_mid_run(runner):
    seen = []

    def fn(job):
        for i in range(10_000):
            time.sleep(0.002)
            job.callback(ProgressEvent("m", "unlearn", i, 10_000, losses={"loss": 1.0}))
            seen.append(i)
        return "finished"

    job = runner.submit(fn)
    _until(lambda: len(seen) >= 5, "the job reported five steps")
    assert job.cancel() is True
    assert job.state in (CANCELLING, CANCELLED)
    assert job.wait(10)
    assert job.state == CANCELLED
    assert job.history_of_states == [QUEUED, RUNNING, CANCELLING, CANCELLED]
    assert job.result is None
    assert len(seen) < 10_000
    assert "cancelled" in job.error.lower() and "Traceback" not in job.error


def test_cancel_past_the_point_of_no_return_is_refused(runner):
    inside, release = threading.Event(), threading.Event()

    def fn(job):
        with job.point_of_no_return():
            inside.set()
            release.wait(5)
            job.callback(ProgressEvent("m", "save", 1, 1))  # must not raise now
        return "committed"

    job = runner.submit(fn)
    assert inside.wait(5)
    assert job.cancel() is False
    release.set()
    assert job.wait(5)
    assert job.state == DONE and job.result == "committed"


def test_a_pending_cancel_stops_the_point_of_no_return():
    job = Job("j", "t", "k", False)
    job._transition(RUNNING)
    assert job.cancel()
    with pytest.raises(RunCancelled):
        with job.point_of_no_return():
            pass


def test_two_cpu_jobs_run_concurrently_with_separate_results(runner):
    both_running = threading.Barrier(2, timeout=5)

    def make(k):
        def fn(job):
            both_running.wait()  # only passes if the two jobs really overlap
            _steps(job, 20, source=f"src{k}")
            return sum(range(k * 100))
        return fn

    a, b = runner.submit(make(1), label="a"), runner.submit(make(2), label="b")
    assert a.wait(10) and b.wait(10)
    assert (a.state, b.state) == (DONE, DONE)
    assert (a.result, b.result) == (sum(range(100)), sum(range(200)))
    assert list(a.view().latest) == ["src1"] and list(b.view().latest) == ["src2"]


def test_gpu_jobs_are_serialised_in_arrival_order(runner):
    log, lock = [], threading.Lock()
    release_first = threading.Event()

    def make(name, wait=None):
        def fn(job):
            with lock:
                log.append(("start", name))
            if wait is not None:
                assert wait.wait(10)
            with lock:
                log.append(("end", name))
            return name
        return fn

    # Arrival order is made explicit: each job is submitted only once the one before it holds the
    # GPU or has joined the queue (two threads started back to back may reach the queue either way).
    queue = runner.gpu_queue
    first = runner.submit(make("first", release_first), gpu=True)
    _until(lambda: queue.holder == first.id and first.state == RUNNING, "the first job holds the GPU")
    second = runner.submit(make("second"), gpu=True)
    _until(lambda: queue.position(second.id) == 1, "the second job waits first in line")
    third = runner.submit(make("third"), gpu=True)
    _until(lambda: queue.position(third.id) == 2, "the third job waits behind the second")
    cpu = runner.submit(make("cpu"), gpu=False)  # CPU jobs do not wait for the GPU
    assert cpu.wait(5) and cpu.state == DONE
    assert second.state == QUEUED and third.state == QUEUED
    assert "waiting for the GPU" in second.message and "another run is using it" in third.message
    assert queue.position(second.id) == 1 and queue.position(third.id) == 2
    release_first.set()
    assert all(j.wait(5) for j in (first, second, third))
    gpu_log = [e for e in log if e[1] != "cpu"]
    assert gpu_log == [("start", "first"), ("end", "first"), ("start", "second"), ("end", "second"),
                       ("start", "third"), ("end", "third")]
    assert runner.gpu_queue.holder is None


def test_a_job_waiting_for_the_gpu_can_be_cancelled(runner):
    release = threading.Event()
    holder = runner.submit(lambda job: release.wait(10), gpu=True)
    _until(lambda: runner.gpu_queue.holder == holder.id, "the first job holds the GPU")
    waiting = runner.submit(lambda job: "never", gpu=True)
    _until(lambda: runner.gpu_queue.position(waiting.id) is not None, "the second job waits for the GPU")
    assert waiting.state == QUEUED
    assert waiting.cancel() is True
    assert waiting.wait(5) and waiting.state == CANCELLED and waiting.result is None
    release.set()
    assert holder.wait(5) and holder.state == DONE
    assert runner.gpu_queue.holder is None


def test_submit_once_joins_the_active_job_of_its_key(runner):
    gate = threading.Event()
    calls = []

    def fn(job):
        calls.append(job.id)
        assert gate.wait(10)
        return len(calls)

    # Many callers at the same moment (two tabs, a double click): one job.
    barrier = threading.Barrier(8, timeout=10)
    got = []

    def caller():
        barrier.wait()
        got.append(runner.submit_once("experiment:same", fn, label="demo"))

    threads = [threading.Thread(target=caller) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    first = {job for job, _ in got}
    assert len(got) == 8 and len(first) == 1 and sum(new for _, new in got) == 1
    job = first.pop()
    other, new = runner.submit_once("experiment:other", fn)  # another key runs beside it
    assert new and other is not job
    gate.set()
    assert job.wait(10) and other.wait(10) and job.result in (1, 2)
    again, new = runner.submit_once("experiment:same", fn)  # once it has ended, a new one starts
    assert new and again is not job and again.wait(10)
    assert len(calls) == 3


def test_a_job_is_found_again_by_its_token_only(runner):
    a, b = runner.submit(lambda job: 1), runner.submit(lambda job: 2)
    assert a.token != b.token and len(a.token) >= 16
    assert runner.find_token(a.token) is a and runner.find_token(b.token) is b
    for bad in (None, "", "job-1", a.id, a.token[:-1], "é" * 16):
        assert runner.find_token(bad) is None, bad


def test_gpu_flag_defaults_from_the_device(runner, monkeypatch):
    import torch

    from mixunlearn import utils

    assert runner.submit(lambda job: 1, device="cpu").gpu is False
    assert runner.submit(lambda job: 1).gpu is False
    # An accelerator, on any machine: resolve_device is what decides, so stand in for a CUDA and an
    # MPS device (the real one raises ValueError where there is none: such a job is a CPU job).
    resolved = {"cuda": "cuda", "cuda:1": "cuda", "mps": "mps", "auto": "cuda", "cpu": "cpu"}

    def fake_resolve(device):
        if device not in resolved:
            raise ValueError(f"unknown device {device!r}")
        return torch.device(resolved[device])

    monkeypatch.setattr(utils, "resolve_device", fake_resolve)
    hold = threading.Event()
    for device in ("cuda", "cuda:1", "mps", "auto"):
        job = runner.submit(lambda job: hold.wait(10), device=device)
        assert job.gpu is True, device
        _until(lambda j=job: j.state != QUEUED or runner.gpu_queue.position(j.id) is not None,
               f"the {device} job reached the GPU queue")
    assert runner.submit(lambda job: 1, device="cpu").gpu is False
    assert runner.submit(lambda job: 1, device="tpu").gpu is False  # unresolvable: not an accelerator
    # An explicit flag wins over the device.
    assert runner.submit(lambda job: 1, device="cuda", gpu=False).gpu is False
    assert runner.submit(lambda job: hold.wait(10), device="cpu", gpu=True).gpu is True
    hold.set()
    assert all(j.wait(10) for j in runner.jobs())
    assert runner.gpu_queue.holder is None


def test_failures_keep_a_clear_message_and_the_traceback_apart(runner):
    def nan(job):
        raise NonFiniteLossError("mixunlearn", 12, "loss l_mix")

    def bad(job):
        raise ValueError("class 12 is out of range")

    def bug(job):
        return {}["missing"]  # KeyError from a bug

    j1, j2, j3 = runner.submit(nan), runner.submit(bad), runner.submit(bug)
    for j in (j1, j2, j3):
        assert j.wait(5) and j.state == FAILED
        assert "Traceback" not in j.error and j.error
        assert "Traceback" in j.debug
    assert "step 12" in j1.error and "smaller learning rate" in j1.error
    assert "class 12 is out of range" in j2.error and "run again" in j2.error
    assert j1.history_of_states == [QUEUED, RUNNING, FAILED]


def test_describe_error_names_what_to_do_next():
    from mixunlearn.datasets import DataNotFoundError
    from mixunlearn.store import StoreError

    assert "digits" in jobs.describe_error(DataNotFoundError("Dataset 'cifar10' not found."))
    assert "MIXUNLEARN_HOME" in jobs.describe_error(StoreError("unreadable"))
    from mixunlearn.utils import HomeError

    home = jobs.describe_error(HomeError("MIXUNLEARN_HOME=/x is not usable: it is a file, not a folder; set "
                                         "MIXUNLEARN_HOME to a folder you can write"))
    assert home.endswith("folder you can write, then restart the app.") and "Invalid setting" not in home
    assert "smaller batch" in jobs.describe_error(RuntimeError("CUDA out of memory. Tried to allocate"))
    unexpected = jobs.describe_error(ZeroDivisionError("division by zero"))
    assert "ZeroDivisionError" in unexpected and "Traceback" not in unexpected


def test_progress_buffer_is_bounded_and_keeps_snapshots_and_probes():
    buf = jobs.ProgressBuffer(max_history=100, max_snapshots=3, max_messages=5)
    for i in range(1000):
        buf.record(ProgressEvent("m", "unlearn", i, 1000, losses={"l": float(i)},
                                 data={"probe": {"forget_acc": 50.0, "retain_acc": 90.0}}, model=object()))
    for u in range(7):
        buf.record(ProgressEvent("m", "generator", u, 10, data={"snapshot": {"update": u}}))
    for k in range(9):
        buf.record(ProgressEvent("m", "unlearn", 0, 0, message=f"msg {k}"))
    hist = buf.history()["m"]
    assert len(hist) <= 100 and hist[-1]["step"] == 999 and hist[-1]["probe_forget_acc"] == 50.0
    assert [s["update"] for s in buf.snapshots("m")] == [4, 5, 6]
    assert [m[2] for m in buf.messages()] == [f"msg {k}" for k in range(4, 9)]
    assert "model" not in buf.latest()["m"]


def test_get_runner_is_a_process_wide_singleton():
    assert jobs.get_runner() is jobs.get_runner()


# --------------------------------------------------------------------------- experiment jobs


def _tiny_config(**kw):
    from mixunlearn.experiment import ExperimentConfig

    base = dict(dataset="digits", forget="class:3", methods=("retrain", "finetune"), seed=0, device="cpu",
                params={"finetune": {"epochs": 1}})
    base.update(kw)
    return ExperimentConfig(**base)


def test_experiment_job_commits_a_complete_run(tmp_path, digits_class3, session_cache):
    from mixunlearn import analysis
    from mixunlearn.store import RunStore

    store = RunStore(tmp_path / "store")
    runner = JobRunner(gpu_queue=GpuQueue())
    job = runner.submit(jobs.experiment_job(_tiny_config(), store=store, cache=session_cache, project="pca"),
                        label="tiny")
    assert job.wait(300), "experiment job did not finish"
    assert job.state == DONE, job.error + job.debug
    run_id = job.result["run_id"]
    assert [r.id for r in store.list_runs("complete")] == [run_id]
    row = store.get(run_id)
    assert set(row.methods) == {"retrain", "finetune"}
    app = row.results["app"]
    assert app["models"] == ["original", "retrain", "finetune"] and app["forget_classes"] == [3]
    tensors = store.load_tensors(run_id)
    pack = analysis.AnalysisPack.from_tensors(tensors, app["models"])
    assert len(pack.y_test) == len(digits_class3[0].x_test)  # digits' whole test split (< 1000)
    # The probe accuracies of the live run were kept with it.
    assert any(k.startswith("live/finetune/history/probe_forget_acc") for k in tensors)
    proj = store.load_artifact(run_id, "proj-pca")
    assert proj is not None and set(proj) == set(app["models"])
    csv = store.read_file(run_id, "metrics.csv").decode()
    assert csv.splitlines()[1].startswith("retrain,")


def test_cancelled_or_failed_experiment_leaves_no_complete_run(tmp_path, session_cache):
    from mixunlearn.store import RunStore

    store = RunStore(tmp_path / "store")
    runner = JobRunner(gpu_queue=GpuQueue())
    started = threading.Event()

    def fn(job):
        inner = jobs.experiment_job(_tiny_config(seed=7), store=store, cache=session_cache)
        original_callback = job.callback

        def spy(event):
            started.set()
            original_callback(event)

        job.callback = spy
        return inner(job)

    job = runner.submit(fn)
    assert started.wait(120)
    job.cancel()
    assert job.wait(120) and job.state == CANCELLED
    assert store.list_runs("complete") == []
    statuses = {r.status for r in store.list_runs(None)}
    assert statuses == {"cancelled"}

    failing = runner.submit(jobs.experiment_job(_tiny_config(forget="class:3", dataset="cifar10", download=False),
                                                store=store, cache=session_cache))
    assert failing.wait(60) and failing.state == FAILED
    assert "cifar10" in failing.error.lower() and "Traceback" not in failing.error
    assert store.list_runs("complete") == []


def test_eta_from_the_phase_rate(monkeypatch):
    """ETA = time spent in the phase × steps left / steps done in it; none before a rate exists;
    a new phase (or a restart of the step count) starts a new clock."""
    import types

    from mixunlearn.jobs import ProgressBuffer

    clock = iter([100.0, 110.0, 130.0, 131.0, 135.0])
    monkeypatch.setattr(jobs, "time", types.SimpleNamespace(time=lambda: next(clock)))
    buf = ProgressBuffer()
    buf.record(ProgressEvent("retrain", "train", 10, 110))
    assert buf.latest()["retrain"]["eta"] is None  # one report: no rate yet
    buf.record(ProgressEvent("retrain", "train", 20, 110))  # 10 steps in 10 s, 90 left
    assert buf.latest()["retrain"]["eta"] == pytest.approx(90.0)
    buf.record(ProgressEvent("retrain", "train", 30, 110))  # 20 steps in 30 s, 80 left
    assert buf.latest()["retrain"]["eta"] == pytest.approx(120.0)
    buf.record(ProgressEvent("retrain", "evaluate", 0, 1))  # new phase: no rate
    assert buf.latest()["retrain"]["eta"] is None
    buf.record(ProgressEvent("retrain", "evaluate", 1, 1))  # last step reported
    assert buf.latest()["retrain"]["eta"] == 0.0
