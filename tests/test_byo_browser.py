"""Bring your own in a real browser (Debian's chromium through Playwright, as tests/test_browser.py):
a folder of PNG digits (three classes) chosen by path on Setup, the doc's plugin method from
$MIXUNLEARN_HOME/plugins/ chosen on Unlearn, the run started with the button, then the Compare,
Embeddings (PCA) and Loss KDE pages on its results; no exception on any page."""

from __future__ import annotations

import re

import pytest
from test_browser import CHROMIUM, CHROMIUM_ARGS, _goto, _no_exception, server  # noqa: F401 - the fixture
from test_byo import doc_example, write_digit_folder

pytestmark = pytest.mark.browser


def test_an_image_folder_and_a_plugin_method_in_a_real_browser(request, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    folder = write_digit_folder(tmp_path / "my digits", per_class=30)
    url = request.getfixturevalue("server")  # MIXUNLEARN_HOME is tmp_path / "home"
    plugins = tmp_path / "home" / "plugins"
    plugins.mkdir()
    (plugins / "my_plugin.py").write_text(doc_example())
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            page.wait_for_load_state("networkidle")
            _goto(page, "Setup")
            expect(page.get_by_text("my_plugin.py").first).to_be_visible(timeout=120_000)
            page.get_by_test_id("stSelectbox").filter(has_text="Dataset").click()
            page.get_by_role("option", name="Image folder or .npz file (your own data)").click()
            box = page.get_by_role("textbox", name="Folder of images (one folder per class) or .npz file")
            expect(box).to_be_visible(timeout=60_000)
            box.fill(str(folder))
            box.press("Enter")
            expect(page.get_by_text(f"--dataset imagefolder:{folder}").first).to_be_visible(timeout=120_000)
            expect(page.get_by_text("72 train / 18 test, 3 classes").first).to_be_visible()  # its description
            _no_exception(page)

            _goto(page, "Unlearn")
            methods = page.get_by_test_id("stMultiSelect").locator("input")
            expect(methods).to_be_visible(timeout=120_000)
            methods.click()
            methods.press("Backspace")  # drops the preselected MixUnlearn
            methods.fill("my_method")
            page.get_by_role("option", name="Head tune (my_method)").click()
            methods.press("Escape")
            page.wait_for_load_state("networkidle")
            run = page.get_by_role("button", name="Run unlearning")
            expect(run).to_be_enabled(timeout=60_000)
            run.click()
            # Stored: the analysis pages can read it. (The job then computes the UMAP projection, which
            # on a heavily loaded machine can take minutes; the Embeddings page is checked with PCA.)
            saved = re.compile("The run is saved|Unlearning run finished")
            expect(page.get_by_text(saved).first).to_be_visible(timeout=420_000)
            _no_exception(page)

            _goto(page, "Compare")
            expect(page.get_by_test_id("stDataFrame").first).to_be_visible(timeout=120_000)
            expect(page.get_by_test_id("stDataFrame").first).to_contain_text("Head tune", timeout=60_000)
            _no_exception(page)
            _goto(page, "Embeddings")
            pca = page.get_by_test_id("stRadio").get_by_text("PCA", exact=True)
            expect(pca).to_be_visible(timeout=120_000)
            pca.click()
            expect(page.locator(".js-plotly-plot").first).to_be_visible(timeout=180_000)
            _no_exception(page)
            _goto(page, "Loss KDE")
            expect(page.locator(".js-plotly-plot").first).to_be_visible(timeout=120_000)
            _no_exception(page)
        finally:
            browser.close()
