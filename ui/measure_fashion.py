"""Measure real data in the app, as a person does it: a fresh ``streamlit run app.py`` with an empty
MIXUNLEARN_HOME; headless chromium picks the dataset and class on Setup, reads the time estimate,
trains the original model and Retrain, picks MixUnlearn, Fine-tune and NegGrad on Unlearn, reads
that estimate, runs them, then opens Compare, Embeddings, Loss KDE and Generator until each shows
its figure. The clock runs from the first click (Train) to the last page drawn.

    python -m ui.measure_fashion [--dataset fashion_mnist] [--class-index 0] [--chromium /usr/bin/chromium]

Prints the wall time of each step, the estimates the app showed (and their ratio to the measured
times), the app server's CPU seconds and the load average.
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile
import time

from ui.measure_demo import ARGS, cpu_seconds, load_average, start_app

TIMEOUT_MS = 1_200_000


def _seconds(text: str) -> float | None:
    """The first duration in an estimate line ("about 1 min 05 s", "about 48 s", "about 2 h 01 min")."""
    m = re.search(r"about (?:(\d+) h )?(?:(\d+) min )?(?:([\d.]+) s)?", text)
    if not m or not any(m.groups()):
        return None
    h, mi, s = (float(g) if g else 0.0 for g in m.groups())
    return 3600 * h + 60 * mi + s


def _pick(page, label: str, option: str) -> None:
    page.get_by_test_id("stSelectbox").filter(has_text=label).first.click()
    page.get_by_role("option", name=option).first.click()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="fashion_mnist")
    ap.add_argument("--class-index", type=int, default=0)
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    args = ap.parse_args()
    from playwright.sync_api import expect, sync_playwright

    from mixunlearn.datasets import get_info

    info = get_info(args.dataset)
    home = tempfile.mkdtemp(prefix="mixunlearn-fashion-")
    proc, url = start_app(home)
    marks: dict[str, float] = {}
    shown: dict[str, str] = {}
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(120_000)
            expect.set_options(timeout=120_000)
            page.goto(url)
            page.get_by_test_id("stSidebarNav").get_by_text("Setup", exact=True).click()
            expect(page.get_by_text("Original model and Retrain")).to_be_visible()
            _pick(page, "Dataset", info.title)
            expect(page.get_by_test_id("stSelectbox").filter(has_text="Class to forget")).to_be_visible()
            _pick(page, "Class to forget", f"{args.class_index}: {info.class_names[args.class_index]}")
            est = page.get_by_text("Estimated training of the original model and Retrain")
            expect(est).to_be_visible()
            shown["setup"] = est.inner_text()
            cpu0, load0 = cpu_seconds(proc.pid), load_average()
            t0 = time.perf_counter()
            page.get_by_role("button", name="Train or load the original model and Retrain").click()
            expect(page.get_by_text("Original and Retrain finished")).to_be_visible(timeout=TIMEOUT_MS)
            marks["original + Retrain"] = time.perf_counter() - t0

            page.get_by_test_id("stSidebarNav").get_by_text("Unlearn", exact=True).click()
            ms = page.get_by_test_id("stMultiSelect").first
            expect(ms).to_be_visible()
            for option in ("FT (finetune)", "NegGrad (neggrad)"):
                ms.click()
                page.get_by_role("option", name=option).first.click()
            page.keyboard.press("Escape")
            est = page.get_by_text("Estimated run:")
            expect(est).to_be_visible()
            shown["unlearn"] = est.inner_text()
            t1 = time.perf_counter()
            page.get_by_role("button", name="Run unlearning").click()
            expect(page.get_by_text("Unlearning run finished")).to_be_visible(timeout=TIMEOUT_MS)
            marks["unlearning run"] = time.perf_counter() - t1

            for title in ("Compare", "Embeddings", "Loss KDE", "Generator"):
                t = time.perf_counter()
                page.get_by_test_id("stSidebarNav").get_by_text(title, exact=True).click()
                expect(page.locator(".js-plotly-plot").first).to_be_visible(timeout=300_000)
                if title == "Embeddings":  # every model's scatter drawn (original, Retrain, 3 methods)
                    expect(page.locator(".js-plotly-plot .scatterlayer .trace").nth(9)).to_be_attached(
                        timeout=300_000)
                if title == "Generator":
                    expect(page.get_by_text("mask (forget share)").first).to_be_visible(timeout=120_000)
                assert page.get_by_test_id("stException").count() == 0, title
                marks[title] = time.perf_counter() - t
            total = time.perf_counter() - t0
            cpu1, load1 = cpu_seconds(proc.pid), load_average()
            browser.close()
    finally:
        proc.terminate()
        proc.wait(30)
    for k, v in marks.items():
        print(f"{k:<22} {v:7.1f} s")
    print(f"{'total (first click to last page)':<22} {total:7.1f} s")
    for k, text in shown.items():
        est = _seconds(text)
        meas = marks["original + Retrain"] if k == "setup" else marks["unlearning run"]
        ratio = f"; measured / estimated = {meas / est:.2f}" if est else ""
        print(f"estimate shown on {k}: {text!r}{ratio}")
    cpu = f"{cpu1 - cpu0:.1f}" if cpu0 is not None and cpu1 is not None else "?"
    print(f"app server CPU {cpu} s; {os.cpu_count()} CPUs; load average before {load0} / after {load1}; "
          f"cold MIXUNLEARN_HOME={home}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
