"""The generator playground once in a real browser (Debian's chromium through Playwright, as
tests/test_browser.py): a stored digits run, the Generator page, Run, and the result beside the
run's own with its metrics, without an exception on the page."""

from __future__ import annotations

import pytest
from test_browser import CHROMIUM, CHROMIUM_ARGS, _goto, _no_exception, server  # noqa: F401 - the fixture

from mixunlearn import jobs
from mixunlearn.experiment import ExperimentConfig

pytestmark = pytest.mark.browser


def test_the_playground_in_a_real_browser(request, tmp_path, session_cache):
    from playwright.sync_api import expect, sync_playwright

    from mixunlearn.store import RunStore

    url = request.getfixturevalue("server")  # the app, with this test's MIXUNLEARN_HOME = tmp_path / "home"
    cfg = ExperimentConfig(dataset="digits", forget="class:3", methods=("retrain", "mixunlearn"), seed=0,
                           device="cpu")
    job = jobs.get_runner().submit(jobs.experiment_job(cfg, store=RunStore(tmp_path / "home" / "store"),
                                                       cache=session_cache, project=None))
    assert job.wait(300) and job.state == jobs.DONE, job.error
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            page.wait_for_load_state("networkidle")
            _goto(page, "Generator")
            expect(page.get_by_text("Playground: run MixUnlearn again")).to_be_visible(timeout=60_000)
            expect(page.get_by_text("No playground result for this run yet")).to_be_visible(timeout=60_000)
            plots_before = page.locator(".js-plotly-plot").count()
            page.get_by_role("button", name="Run", exact=True).click()
            expect(page.get_by_text("#1: the run's own settings").first).to_be_visible(timeout=180_000)
            expect(page.get_by_text("gap to Retrain").first).to_be_visible(timeout=60_000)
            expect(page.get_by_text("Playground run finished")).to_be_visible()
            # The two sides' mask grids and health curves join the page's own figures.
            expect(page.locator(".js-plotly-plot").nth(plots_before + 3)).to_be_attached(timeout=60_000)
            _no_exception(page)
        finally:
            browser.close()
