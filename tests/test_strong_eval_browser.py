"""The Strong evaluation page once in a real browser (Debian's chromium through Playwright, as
tests/test_browser.py): the estimate before starting, a tiny evaluation (N = 3, one training
epoch, Retrain and FT) started with the button, the tab reloaded while it runs (the URL's ?eval= token finds the
job again), then the results: scores, the ε histogram, the least-forgotten examples with one
example's confidences, and a definition opened from its popover; no exception on the page."""

from __future__ import annotations

import pytest
from test_browser import CHROMIUM, CHROMIUM_ARGS, _goto, _no_exception, server  # noqa: F401 - the fixture

pytestmark = pytest.mark.browser


def _set_number(page, label: str, value: int) -> None:
    box = page.get_by_role("spinbutton", name=label)
    box.fill(str(value))
    box.press("Enter")
    page.wait_for_load_state("networkidle")


def _idle(page) -> None:
    """Wait until the app's script has stopped running (Streamlit's running icon is gone)."""
    from playwright.sync_api import expect

    expect(page.get_by_test_id("stStatusWidgetRunningIcon")).to_have_count(0, timeout=120_000)


def _start(page, start) -> None:
    """Click Start and wait for the URL's ?eval= token. A click that lands while a rerun is replacing
    the page can be lost (one CI run timed out here); clicking again is safe, because the page submits
    with submit_once and so joins an evaluation that is already running instead of starting a second."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    has_token = "() => new URLSearchParams(location.search).has('eval')"
    _idle(page)
    start.click()
    for _ in range(3):
        try:
            page.wait_for_function(has_token, timeout=30_000)
            return
        except PlaywrightTimeout:
            _idle(page)
            if start.is_enabled():
                start.click()
    page.wait_for_function(has_token, timeout=30_000)


def test_the_strong_evaluation_page_in_a_real_browser(request):
    from playwright.sync_api import expect, sync_playwright

    url = request.getfixturevalue("server")  # the app, with this test's own MIXUNLEARN_HOME
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            page.wait_for_load_state("networkidle")
            _goto(page, "Strong evaluation")
            expect(page.get_by_text("Estimated time").first).to_be_visible(timeout=120_000)
            _set_number(page, "Pool size N (models per pool)", 3)
            _set_number(page, "Training epochs (0 = the recipe's)", 1)
            # keep it small: Retrain (other seeds) and FT only, one model per pool for relearn and probe
            methods = page.get_by_test_id("stMultiSelect").locator("input")
            methods.click()
            methods.press("Backspace")  # drops the last chosen method, MixUnlearn
            methods.press("Escape")
            page.wait_for_load_state("networkidle")
            expect(page.get_by_test_id("stMultiSelect").get_by_text("MixUnlearn")).to_have_count(0, timeout=30_000)
            page.get_by_text("Relearn and probe settings").click()
            _set_number(page, "Models per pool given the relearn and probe checks", 1)
            expect(page.get_by_text("6 retrained models to train").first).to_be_visible(timeout=60_000)
            start = page.get_by_role("button", name="Start the evaluation")
            expect(start).to_be_enabled(timeout=30_000)
            _start(page, start)
            # Reload while it runs: the new session finds the job through the URL's token.
            page.reload()
            expect(page.get_by_role("button", name="Start the evaluation")).to_be_disabled(timeout=60_000)
            expect(page.get_by_text("Strong evaluation (N = 3) finished")).to_be_visible(timeout=300_000)
            expect(page.get_by_text("Least-forgotten examples")).to_be_visible(timeout=60_000)
            expect(page.get_by_test_id("stDataFrame").first).to_be_visible()
            # the ε histogram, the example images and one example's confidences
            expect(page.locator(".js-plotly-plot").nth(2)).to_be_attached(timeout=60_000)
            expect(page.get_by_text("confidence under each model")).to_be_visible(timeout=60_000)
            page.get_by_role("button", name="U-LiRA").first.click()
            expect(page.get_by_text("leave-one-out").first).to_be_visible(timeout=30_000)
            _no_exception(page)
        finally:
            browser.close()
