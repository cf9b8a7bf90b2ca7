"""Bring your own, in the app (AppTest): the Setup page lists $MIXUNLEARN_HOME/plugins/ with each
file's methods or its error, a plugin's method gets a form on the Unlearn page, and an image
folder is chosen by path -- a bad folder is one message, never an exception."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest
from test_byo import clean_registry, doc_example, write_digit_folder  # noqa: F401 - the fixture

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")


def _texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


def _setup() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    at.switch_page("pages/1_Setup.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


@pytest.fixture
def home_plugins(clean_registry):  # noqa: F811 - the fixture of test_byo
    folder = Path(os.environ["MIXUNLEARN_HOME"]) / "plugins"
    folder.mkdir(parents=True)
    (folder / "my_plugin.py").write_text(doc_example())
    (folder / "zz_broken.py").write_text("import torch\nraise RuntimeError('no licence key')\n")
    return folder


def test_setup_lists_each_plugin_with_its_methods_or_its_error_and_unlearn_offers_them(home_plugins):
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    at.switch_page("pages/2_Unlearn.py")  # first: app.py loads the plugins, not the Setup page
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    methods = at.multiselect(key="unlearn_methods")
    assert any("my_method" in str(o) for o in methods.options), methods.options
    methods.set_value(["my_method"]).run()
    assert not at.exception
    assert "Head tune — hyper-parameters" in [e.label for e in at.expander]
    at.switch_page("pages/1_Setup.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert "`my_plugin.py`: **my_method**" in _texts(at.markdown)
    errors = _texts(at.error)
    assert "zz_broken.py" in errors and "RuntimeError: no licence key" in errors and "(line 2)" in errors


def test_an_image_folder_is_chosen_by_path_and_a_bad_one_is_a_message(tmp_path):
    one_class = tmp_path / "one"
    write_digit_folder(one_class, classes=(0,), names=("zero",), per_class=4)
    at = _setup()
    at.selectbox(key="setup_dataset").set_value("__own__").run()
    assert not at.exception
    assert "Enter the path" in _texts(at.error)
    at.text_input(key="setup_own_path").set_value(str(one_class)).run()
    assert not at.exception and "needs at least 2 class folders" in _texts(at.error)
    assert "train_button" not in [b.key for b in at.button]  # nothing can start
    good = write_digit_folder(tmp_path / "good", per_class=10)
    at.text_input(key="setup_own_path").set_value(str(good)).run()
    assert not at.exception and not at.error, _texts(at.error)
    assert at.selectbox(key="setup_model").value == "cnn2"
    (classes,) = [w for w in at.selectbox if str(w.key).startswith("setup_class_imagefolder:")]  # keyed on the data
    assert classes.options == ["0: one", "1: two", "2: zero"]
    assert f"--dataset imagefolder:{good}" in _texts(at.markdown)
    from ui.state import K_SETUP

    assert at.session_state[K_SETUP]["dataset"] == f"imagefolder:{good}"
    assert at.session_state[K_SETUP]["recipe"] == "digits_fast"  # the small-data recipe
