"""Measure the app's first minutes, as a person sees them: a fresh ``streamlit run app.py`` (empty
MIXUNLEARN_HOME), headless chromium opens Home, and the clock runs from the page request until
the "Run the default demo" button is visible; then the server gets SIGINT (Ctrl-C) or SIGTERM
right after that first page load, and the clock runs until the process has exited.

    python -m ui.measure_startup [--repeats 3] [--during-demo] [--chromium /usr/bin/chromium]

Each repeat starts two fresh servers (one per signal). ``--during-demo`` adds a third per repeat:
the signal (SIGINT) arrives two seconds after the demo's job has started (its token in the
URL); the run must then be marked ``interrupted`` (or ``cancelled``) in the store, never left
``running``. Targets: button visible <= 3 s on an idle machine, exit <= 5 s. Prints every
measurement, the median and worst, the CPU count and the load average before and after (other
programs on the machine slow a fresh server down: compare runs with their load average).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

from ui.measure_demo import ARGS, load_average, start_app

TARGET_BUTTON_S, TARGET_EXIT_S = 3.0, 5.0


def exit_seconds(proc, sig: int, limit: float = 60.0) -> float:
    """Send ``sig`` and time the exit (``limit`` and a kill when it does not come)."""
    start = time.perf_counter()
    proc.send_signal(sig)
    try:
        proc.wait(limit)
    except Exception:  # noqa: BLE001 - subprocess.TimeoutExpired: report the limit, then clean up
        proc.kill()
        proc.wait()
        return float("inf")
    return time.perf_counter() - start


def run_statuses(home: Path) -> list[str]:
    from mixunlearn.store import RunStore

    db = home / "store"
    if not db.exists():
        return []
    return [r.status for r in RunStore(str(db)).list_runs(None)]


def one(browser, sig: int, demo: bool = False) -> tuple[float, float, list[str]]:
    """(seconds to a visible demo button, seconds to exit after ``sig``, run statuses after)."""
    from playwright.sync_api import expect

    home = Path(tempfile.mkdtemp(prefix="mixunlearn-startup-"))
    proc, url = start_app(home)
    try:
        page = browser.new_page()
        start = time.perf_counter()
        page.goto(url)
        button = page.get_by_role("button", name="Run the default demo")
        expect(button).to_be_visible(timeout=120_000)
        shown = time.perf_counter() - start
        if demo:
            button.click()
            # The job runs once the app has put its token into the URL; then let it work a moment.
            page.wait_for_function("() => new URLSearchParams(location.search).has('job')", timeout=120_000)
            page.wait_for_timeout(2000)
        gone = exit_seconds(proc, sig)
        page.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return shown, gone, run_statuses(home)


def summary(name: str, values: list[float], target: float) -> str:
    worst = max(values)
    return (f"{name}: " + ", ".join(f"{v:.2f}" for v in values) + f" s; median {statistics.median(values):.2f}, "
            f"worst {worst:.2f} (target <= {target:g} s: {'met' if worst <= target else 'MISSED'})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--during-demo", action="store_true", help="also stop a server while the demo runs")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    load_before = load_average()
    buttons, exits = [], {"SIGINT": [], "SIGTERM": [], "SIGINT during the demo": []}
    statuses: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, args=ARGS)
        try:
            for _ in range(args.repeats):
                cases = [("SIGINT", signal.SIGINT, False), ("SIGTERM", signal.SIGTERM, False)]
                if args.during_demo:
                    cases.append(("SIGINT during the demo", signal.SIGINT, True))
                for name, sig, demo in cases:
                    shown, gone, runs = one(browser, sig, demo)
                    buttons.append(shown)
                    exits[name].append(gone)
                    if demo:
                        statuses += runs
                    print(f"  {name}: button after {shown:.2f} s, exit {gone:.2f} s after the signal"
                          + (f", runs: {runs}" if demo else ""), file=sys.stderr)
        finally:
            browser.close()
    print(f"{os.cpu_count()} CPUs; load average before {load_before} / after {load_average()}; "
          f"{args.repeats} repeat(s), a fresh server each time")
    print(summary("first page load -> demo button visible", buttons, TARGET_BUTTON_S))
    for name, values in exits.items():
        if values:
            print(summary(f"exit after {name}", values, TARGET_EXIT_S))
    if args.during_demo:
        bad = [s for s in statuses if s not in ("interrupted", "cancelled")]
        print(f"runs of the stopped demos: {statuses}" + (" -- NOT all stopped cleanly" if bad or not statuses
                                                           else " (none left running)"))
        if bad or not statuses:
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
