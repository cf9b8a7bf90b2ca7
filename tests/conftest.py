"""Shared fixtures. Every test runs with its own MIXUNLEARN_HOME (cache and store in a temp
folder), except where a session-wide cache of trained digits models is asked for."""

from __future__ import annotations

import os
import sys

# Before torch loads OpenMP: spinning worker threads make CPU runs several times slower on
# shared cores (see mixunlearn/cli.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    monkeypatch.setenv("MIXUNLEARN_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MIXUNLEARN_DATA", raising=False)
    yield


@pytest.fixture(autouse=True)
def _app_navigation_mode(monkeypatch):
    """AppTest treats every script run as a server's first (it resets Streamlit's "pages
    directory" flag before each), so ui/shell.py would turn each run into a rerun and drop its
    widget events. A real server has that first run once per process (tests/test_browser.py opens
    every page's URL first on a fresh server); here the flag is cleared at once."""
    if "streamlit" not in sys.modules:  # only the app's tests import Streamlit
        yield
        return
    from streamlit.runtime.pages_manager import PagesManager

    init = PagesManager.__init__

    def navigation_mode(self, *args, **kwargs):
        init(self, *args, **kwargs)
        PagesManager.uses_pages_directory = False

    monkeypatch.setattr(PagesManager, "__init__", navigation_mode)
    yield


@pytest.fixture(scope="session")
def digits_dataset():
    from mixunlearn.datasets import load_dataset

    return load_dataset("digits")


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory):
    """A model cache shared by the whole test session (trained digits models are reused)."""
    from mixunlearn.training import ModelCache

    return ModelCache(tmp_path_factory.mktemp("model_cache"))


@pytest.fixture(scope="session")
def digits_class3(digits_dataset, session_cache):
    """Digits, forget class 3, seed 0: (data, original model, retrained model), trained once."""
    from mixunlearn.data import make_split
    from mixunlearn.training import get_recipe, get_trained

    data = make_split(digits_dataset, "class:3", seed=0)
    recipe = get_recipe("digits")
    original = get_trained("original", data, "digits_cnn", recipe, cache=session_cache)
    retrain = get_trained("retrain", data, "digits_cnn", recipe, cache=session_cache)
    return data, original.model, retrain.model


@pytest.fixture(scope="session")
def digits_data_level(digits_dataset, session_cache):
    """Digits, data:5-9:0.4, seed 0: (data, original model, retrained model)."""
    from mixunlearn.data import make_split
    from mixunlearn.training import get_recipe, get_trained

    data = make_split(digits_dataset, "data:5-9:0.4", seed=0)
    recipe = get_recipe("digits")
    original = get_trained("original", data, "digits_cnn", recipe, cache=session_cache)
    retrain = get_trained("retrain", data, "digits_cnn", recipe, cache=session_cache)
    return data, original.model, retrain.model


def pytest_sessionfinish(session, exitstatus):
    """Let the app's UMAP warm-up finish before the interpreter finalises: an AppTest of the last test
    file starts it (ui/state.warm_up_projections, a daemon thread compiling numba kernels), and an
    interpreter that finalises while numba compiles can abort inside LLVM ("Invalid Phi node, not
    present in loop header") after every test passed, failing the run. The app's own exit
    (ui/shutdown.py) ends the process without finalising, so it does not wait."""
    import threading

    for thread in threading.enumerate():
        if thread.name == "mixunlearn-umap-warmup":
            thread.join(timeout=600)
