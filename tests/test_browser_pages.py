"""Every page opened FIRST on a fresh server, in a real browser: the app's own navigation is there
(not Streamlit's legacy ``pages/`` navigation, which a first script run of a server would build
from the folder, skipping app.py) and the page runs without an exception.

One fresh ``streamlit run app.py`` per page, in sequence, with an empty MIXUNLEARN_HOME: only a
server's first script run can fall into the legacy mode, so every page needs its own. The waits
are on what the page shows, never fixed sleeps.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request

import pytest
from test_browser import CHROMIUM, CHROMIUM_ARGS, ROOT, _free_port, _no_exception, _require_browser

pytestmark = pytest.mark.browser

# (URL path, the title our navigation gives the page, text the page itself shows)
PAGES = [("", "Home", "Run the default demo"), ("Setup", "Setup", "Setup"), ("Unlearn", "Unlearn", "Unlearn"),
         ("Compare", "Compare", "Compare"), ("Embeddings", "Embeddings", "Embeddings"),
         ("Loss_KDE", "Loss KDE", "KDE"), ("Generator", "Generator", "Generator"), ("Learn", "Learn", "Learn"),
         ("Strong_evaluation", "Strong evaluation", "Strong evaluation")]


def _start(home) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = dict(os.environ, MIXUNLEARN_HOME=str(home), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
                             "--server.port", str(port), "--server.address", "127.0.0.1",
                             "--browser.gatherUsageStats", "false"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.2)
    proc.kill()
    pytest.fail(f"streamlit did not start:\n{proc.communicate()[0][-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_every_page_opened_first_on_a_fresh_server_shows_the_apps_navigation(tmp_path):
    _require_browser()
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            for i, (path, title, text) in enumerate(PAGES):
                home = tmp_path / f"home{i}"
                home.mkdir()
                proc, url = _start(home)
                try:
                    page = browser.new_page(viewport={"width": 1200, "height": 900})
                    page.goto(f"{url}/{path}")
                    nav = page.get_by_test_id("stSidebarNav")
                    # Our navigation: "Home" first (the legacy one names the main script "app") and every
                    # page under our titles, the one opened marked as the current page.
                    for name in ("Home", "Setup", "Compare", "Loss KDE", "Strong evaluation"):
                        expect(nav.get_by_text(name, exact=True)).to_be_visible(timeout=60_000)
                    assert nav.get_by_text("app", exact=True).count() == 0, f"/{path}: the legacy navigation"
                    current = nav.locator("a[aria-current='page']")
                    expect(current).to_have_count(1, timeout=60_000)
                    assert current.inner_text().strip().endswith(title), (path, current.inner_text())
                    main = page.get_by_test_id("stMain")
                    expect(main.get_by_text(text).first).to_be_visible(timeout=120_000)
                    _no_exception(page)
                    page.close()
                finally:
                    _stop(proc)
        finally:
            browser.close()
