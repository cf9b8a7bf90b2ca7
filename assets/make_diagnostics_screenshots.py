"""Draw the screenshots of the Compare page's diagnostics (docs/app.md): the default demo (digits,
forget class 3) and a data-level run (digits, data:5-9:0.4), each run in its own fresh
MIXUNLEARN_HOME through the app's own experiment job, then shown by a fresh ``streamlit run app.py``
in headless chromium.

    python assets/make_diagnostics_screenshots.py [--chromium /usr/bin/chromium]

Writes assets/screenshot-diag-{classwise,matrix,cka,attack}.png (the demo) and
assets/screenshot-diag-data-{classwise,attack}.png (the data-level run).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_run(home: str, forget: str) -> None:
    os.environ["MIXUNLEARN_HOME"] = home
    from mixunlearn import jobs
    from mixunlearn.experiment import ExperimentConfig
    from mixunlearn.store import RunStore
    from mixunlearn.training import ModelCache

    cfg = jobs.demo_config()
    if forget != cfg.forget:
        cfg = ExperimentConfig(dataset=cfg.dataset, forget=forget, methods=cfg.methods, seed=cfg.seed)
    job = jobs.JobRunner().submit(jobs.experiment_job(cfg, store=RunStore(), cache=ModelCache(), project=None))
    job.wait()
    if job.state != "done":
        raise SystemExit(f"the run ended {job.state}: {job.error}")


def shoot(home: str, chromium: str, shots: dict[str, int], attack_name: str | None) -> None:
    from playwright.sync_api import sync_playwright

    from ui.measure_demo import ARGS, start_app

    proc, url = start_app(home)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=ARGS)
            page = browser.new_page(viewport={"width": 1200, "height": 5200})
            page.goto(f"{url}/Compare")
            page.get_by_text("The membership attack's view").wait_for(timeout=120_000)
            page.wait_for_function("document.querySelectorAll('.js-plotly-plot .main-svg').length >= 6",
                                   timeout=180_000)
            page.wait_for_timeout(2500)
            charts = page.get_by_test_id("stPlotlyChart")
            for name, k in shots.items():
                charts.nth(k).screenshot(path=str(ROOT / "assets" / f"screenshot-diag-{name}.png"))
            if attack_name:
                chart = charts.nth(5).bounding_box()
                table = page.get_by_test_id("stDataFrame").last.bounding_box()
                top, bottom = chart["y"], table["y"] + table["height"] + 8
                page.screenshot(path=str(ROOT / "assets" / f"screenshot-diag-{attack_name}.png"),
                                clip={"x": chart["x"], "y": top, "width": chart["width"], "height": bottom - top})
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=120)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--homes", nargs=2, metavar=("DEMO_HOME", "DATA_HOME"),
                    help="reuse two homes this script filled before (skips the runs)")
    args = ap.parse_args()
    if args.homes:
        demo, data = args.homes
    else:
        demo, data = tempfile.mkdtemp(prefix="mixunlearn-shots-"), tempfile.mkdtemp(prefix="mixunlearn-shots-")
        make_run(demo, "class:3")
        make_run(data, "data:5-9:0.4")
    # charts on Compare: 0 metrics, 1 gap, 2 class-wise, 3 prediction matrix, 4 CKA, 5 attack
    shoot(demo, args.chromium, {"classwise": 2, "matrix": 3, "cka": 4}, "attack")
    shoot(data, args.chromium, {"data-classwise": 2}, "data-attack")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
