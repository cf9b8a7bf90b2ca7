"""Measure the Home demo end to end, as a person sees it: a fresh ``streamlit run app.py`` with an
empty MIXUNLEARN_HOME (no cached models, no runs), headless chromium clicks "Run the default
demo", and the clock stops when "Default demo finished" appears.

    python -m ui.measure_demo [--chromium /usr/bin/chromium] [--keep-home DIR]

Prints the seconds from the click to the message, the app's own job time, and the CPU seconds
the app's server process used meanwhile (user + system, all threads; Linux only) -- a figure that
does not depend on what else runs on the machine.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process so far (Linux /proc), None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def load_average() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "?"


def start_app(home: str | os.PathLike) -> tuple[subprocess.Popen, str]:
    """A fresh ``streamlit run app.py`` on a free local port with MIXUNLEARN_HOME=home, once it
    answers its health check: (the server process, its URL)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, MIXUNLEARN_HOME=str(home))
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
                             "--server.port", str(port), "--server.address", "127.0.0.1"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            urllib.request.urlopen(f"{url}/_stcore/health", timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    return proc, url


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--keep-home", default=None, help="use this (empty) folder as MIXUNLEARN_HOME")
    args = ap.parse_args()
    from playwright.sync_api import expect, sync_playwright

    home = Path(args.keep_home or tempfile.mkdtemp(prefix="mixunlearn-demo-"))
    home.mkdir(parents=True, exist_ok=True)
    if any(home.iterdir()):
        sys.exit(f"{home} is not empty: the measurement needs a cold cache")
    proc, url = start_app(home)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=ARGS)
            page = browser.new_page()
            page.goto(url)
            button = page.get_by_role("button", name="Run the default demo")
            expect(button).to_be_visible(timeout=120_000)
            cpu_before, load_before = cpu_seconds(proc.pid), load_average()
            start = time.perf_counter()
            button.click()
            done = page.get_by_text("Default demo finished")
            expect(done).to_be_visible(timeout=600_000)
            seconds = time.perf_counter() - start
            cpu_after, load_after = cpu_seconds(proc.pid), load_average()
            job_text = done.inner_text()
            browser.close()
        m = re.search(r"finished in (\d+) s", job_text)
        cpu = (f"{cpu_after - cpu_before:.1f}" if cpu_before is not None and cpu_after is not None else "?")
        print(f"click -> 'Default demo finished': {seconds:.1f} s wall (the app's job: {m.group(1) if m else '?'} s); "
              f"app server CPU during the demo: {cpu} s (user+system); {os.cpu_count()} CPUs, load average "
              f"before {load_before} / after {load_after}; cold MIXUNLEARN_HOME={home}")
    finally:
        proc.terminate()
        proc.wait(30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
