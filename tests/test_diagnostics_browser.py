"""Chromium: Compare's views of where a method differs from Retrain (class-wise accuracy,
prediction matrices, layer-wise CKA, the attack's view) on a data-level run that the CLI stored
in the app's home. The class-level default demo's views: tests/test_browser.py."""

from __future__ import annotations

import pytest
from test_browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    _goto,
    _no_exception,
    _where_they_differ,
    server,  # noqa: F401 - the fixture
)

from mixunlearn.cli import main

pytestmark = pytest.mark.browser


def test_compare_views_on_a_data_level_run_in_a_real_browser(server, digits_data_level):  # noqa: F811
    from playwright.sync_api import expect, sync_playwright

    # The same home as the server's (tests/conftest.py sets MIXUNLEARN_HOME to tmp_path/home); the
    # session's cached digits models make this a few seconds.
    assert main(["run", "--dataset", "digits", "--forget", "data:5-9:0.4", "--recipe", "digits",
                 "--methods", "retrain,finetune", "--seed", "0", "--store", "--quiet"]) == 0
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(server)
            expect(page.get_by_test_id("stSidebarNav")).to_be_visible(timeout=60_000)
            _goto(page, "Compare")
            expect(page.get_by_text("Train_f").first).to_be_visible(timeout=60_000)  # the data-level metrics
            _where_they_differ(page)
            _no_exception(page)
        finally:
            browser.close()
