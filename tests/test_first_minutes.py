"""The app's first minutes: the first paint does not wait for torch, Home draws its demo button
before the (slow) time estimate, Ctrl-C / SIGTERM end the server whatever still runs (a running
job's run is marked interrupted), and Setup's class widget follows a dataset switch.

Timings (button after a first page load, exit after a signal) are measured by
``python -m ui.measure_startup``, not asserted here: these tests check the mechanisms."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")


def test_the_first_paint_does_not_import_torch():
    """Everything app.py imports at its top (the modules every page's first paint waits for) loads
    without torch: torch comes with the first thing that computes (seconds on a loaded machine)."""
    tree = ast.parse((ROOT / "app.py").read_text())
    lines = [ast.unparse(node) for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))
             and getattr(node, "module", None) != "__future__"]
    code = "\n".join(lines + ["import sys", "assert 'torch' not in sys.modules, 'torch was imported'",
                              "assert 'pandas' not in sys.modules, 'pandas was imported'"])
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 0, res.stderr[-2000:]


def test_home_draws_the_demo_button_before_the_estimate(monkeypatch):
    """The estimate (torch, the data, a timed probe) comes after the button: even when it fails,
    the button is there and works (the error is a message)."""
    from ui import actions

    def broken(*args, **kwargs):
        raise RuntimeError("estimate broke")

    monkeypatch.setattr(actions, "estimate", broken)
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    assert at.button(key="demo_button") is not None and not at.button(key="demo_button").disabled
    assert "estimate broke" in "\n".join(str(e.value) for e in at.error)


def test_setup_class_widget_follows_the_dataset():
    """Switching the dataset gives the class widget a new identity, so the browser draws the new
    dataset's class names (a keyed widget keeps its identity when only its labels change)."""
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    at.switch_page("pages/1_Setup.py").run()
    assert not at.exception

    def class_box():
        boxes = [b for b in at.selectbox if b.label == "Class to forget"]
        assert len(boxes) == 1
        return boxes[0]

    before = class_box()
    assert before.options[0] == "0: 0"
    at.selectbox(key="setup_dataset").set_value("cifar10").run()
    assert not at.exception
    after = class_box()
    assert after.options[:2] == ["0: airplane", "1: automobile"]
    assert after.id != before.id


EXIT_SCRIPT = textwrap.dedent("""
    import sys, threading, time
    from mixunlearn import jobs
    from mixunlearn.store import RunStore
    from ui import shutdown

    assert not shutdown.install()  # only in a `streamlit run` process by default
    assert shutdown.install(anywhere=True) and not shutdown.install(anywhere=True)  # once per process
    store = RunStore(sys.argv[1])
    started = threading.Event()

    def stuck(job):  # never reaches a progress callback, so it never sees the cancel
        job.run_id, job.run_store = store.begin({"dataset": "digits", "seed": 0}, label="stuck"), store
        started.set()
        while True:
            time.sleep(0.05)

    jobs.get_runner().submit(stuck, label="stuck")
    assert started.wait(60)
    # A page script that is still busy: a non-daemon thread the interpreter would join forever.
    threading.Thread(target=lambda: time.sleep(10 ** 6), name="ScriptRunner.scriptThread").start()
    print("ready", flush=True)
""")


def test_the_app_exits_whatever_still_runs_and_marks_the_running_run_interrupted(tmp_path):
    """What the server does after Streamlit stopped on SIGINT / SIGTERM: the interpreter's exit. A
    busy non-daemon thread and a job that ignores its cancel would keep the process alive forever;
    ui.shutdown ends it, after marking the job's run interrupted."""
    from mixunlearn.store import RunStore

    root = tmp_path / "store"
    res = subprocess.run([sys.executable, "-c", EXIT_SCRIPT, str(root)], cwd=ROOT, capture_output=True, text=True,
                         timeout=240, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 0 and "ready" in res.stdout, res.stderr[-2000:]
    runs = RunStore(str(root)).list_runs(None)
    assert [(r.status, r.label) for r in runs] == [("interrupted", "stuck")]
    assert runs[0].error.startswith("interrupted: the app was stopped")
