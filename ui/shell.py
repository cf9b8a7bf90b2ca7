"""The app's shell: app.py's navigation must run first on every script run, also on the first
run of a server opened at a page's own URL.

Streamlit still supports its old multipage mode: while no ``st.navigation`` call has run in the
process, a top-level ``pages/`` folder makes it build the navigation from the folder and run the
page file straight away, skipping app.py. Every page script therefore calls
``take_over_navigation()`` first: on that one legacy run it switches the mode off and asks for a
rerun, which starts at app.py (navigation, home check, sidebar, reattach) and then runs the
requested page. On every later run it does nothing.
"""

from __future__ import annotations

import streamlit as st


def take_over_navigation() -> None:
    """Leave Streamlit's legacy ``pages/`` mode (see the module docstring); a no-op after that."""
    try:
        from streamlit.runtime.pages_manager import PagesManager
    except ImportError:  # pragma: no cover - a Streamlit without the legacy mode
        return
    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        st.rerun()
