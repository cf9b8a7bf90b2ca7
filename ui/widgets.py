"""Widgets shared by pages: hyper-parameter forms generated from method configs, the run
picker, the page frame (errors become messages, never tracebacks) and navigation links."""

from __future__ import annotations

import logging
import math
import typing
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import streamlit as st

from mixunlearn.jobs import describe_error

from . import state

log = logging.getLogger("mixunlearn.app")

PAGES = {
    # Material icons ship with Streamlit, so they render offline (emoji need a system font).
    "home": ("app.py", "Home", ":material/home:"),
    "setup": ("pages/1_Setup.py", "Setup", ":material/tune:"),
    "unlearn": ("pages/2_Unlearn.py", "Unlearn", ":material/auto_fix_high:"),
    "compare": ("pages/3_Compare.py", "Compare", ":material/table_chart:"),
    "embeddings": ("pages/4_Embeddings.py", "Embeddings", ":material/scatter_plot:"),
    "kde": ("pages/5_Loss_KDE.py", "Loss KDE", ":material/area_chart:"),
    "generator": ("pages/6_Generator.py", "Generator", ":material/blur_on:"),
    "learn": ("pages/7_Learn.py", "Learn", ":material/school:"),
}


HOME_PAGE: Any = None  # the Home st.Page, set by app.py on every run (Home is a function, not a file)


def link(page: str, label: str | None = None) -> None:
    """A link to another page (a plain caption where page links are unavailable)."""
    path, title, icon = PAGES[page]
    target = HOME_PAGE if page == "home" else path
    try:
        st.page_link(target, label=label or title, icon=icon)
    except Exception:  # noqa: BLE001 - e.g. a page not registered in a test harness
        st.caption(f"→ {label or title} page")


@contextmanager
def guarded(what: str = "this page") -> Iterator[None]:
    """Turn any exception inside the block into a clear message (never a traceback)."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - Streamlit's own control flow derives from BaseException
        log.exception("error while rendering %s", what)
        st.error(f"Something went wrong while showing {what}. {describe_error(exc)}")


# --------------------------------------------------------------------------- run picker


def run_picker(where=st.sidebar) -> str | None:
    """Pick the run the analysis pages show (newest first); returns its id or None."""
    runs = state.complete_runs()  # StoreError propagates: require_run turns it into a message
    if not runs:
        return None
    ids = [r.id for r in runs]
    titles = state.run_titles(runs)  # two runs of one title (same setup, same minute) are told apart
    current = state.current_run_id()
    idx = ids.index(current) if current in ids else 0
    chosen = where.selectbox("Run shown", ids, index=idx, format_func=lambda i: titles.get(i, i),
                             key="run_picker", help="Complete runs in the run store, newest first.")
    st.session_state[state.K_RUN] = chosen
    return chosen


def no_run_message(what: str) -> None:
    st.info(f"No finished run yet, so there is nothing to show {what}. Start the default demo on the Home page "
            f"(one to two minutes on a CPU), or choose a setup and methods on the Setup and Unlearn pages.")
    c1, c2 = st.columns(2)
    with c1:
        link("home", "Home: run the default demo")
    with c2:
        link("unlearn", "Unlearn: choose methods")


def require_run(what: str, *, analysis: bool = False) -> tuple[str, Any, dict] | None:
    """The chosen complete run (id, row, tensors), or None after showing a helpful message.
    ``analysis``: the page needs the per-model analysis data that app runs store (runs stored by
    ``python -m mixunlearn run --store`` have metrics only)."""
    try:
        run_id = run_picker()
    except Exception as exc:  # noqa: BLE001 - an unreadable store is a message
        st.error(describe_error(exc))
        return None
    if run_id is None:
        no_run_message(what)
        return None
    try:
        row, tensors = state.load_run(run_id)
    except Exception as exc:  # noqa: BLE001 - an unreadable run is a message, not a crash
        st.error(f"Run {run_id} cannot be read. {describe_error(exc)} Pick another run in the sidebar, or run "
                 f"the experiment again.")
        return None
    if analysis and not (row.results or {}).get("app"):
        st.info(f"Run {run_id} was stored with its metrics only (e.g. by `python -m mixunlearn run --store`), so "
                f"there is nothing to show {what}; its metrics are on the Compare page. Run the same setup from "
                f"the Unlearn page to see it here, or pick another run in the sidebar.")
        return None
    return run_id, row, tensors


# --------------------------------------------------------------------------- hyper-parameter forms


def _base_type(t: Any) -> Any:
    if typing.get_origin(t) is typing.Literal:
        return type(typing.get_args(t)[0])
    return t


def _number_format(value: float, log_scale: bool) -> str:
    if value == 0:
        return "%.4g"
    if log_scale or abs(value) < 1e-3 or abs(value) >= 1e5:
        return "%.2e"
    return "%.4g"


def config_widgets(method: str, family: str | None, key_prefix: str, container=None,
                   prefill: dict[str, Any] | None = None) -> dict[str, Any]:
    """Widgets for every field of ``method``'s config, prefilled with its defaults for the model
    ``family`` (and ``prefill`` on top, e.g. tuned settings), with the field's help text; returns the
    chosen values by field name."""
    from mixunlearn.methods import config_to_dict, field_specs, get_method, make_config  # torch: not on first paint

    spec = get_method(method)
    defaults = config_to_dict(make_config(method, family, prefill))
    box = container or st
    values: dict[str, Any] = {}
    for f in field_specs(spec.config_cls):
        name, t = f["name"], _base_type(f["type"])
        default = defaults.get(name, f["default"])
        key = f"{key_prefix}:{method}:{family}:{name}"
        help_text = f["help"] or None
        lo, hi, choices = f["min"], f["max"], f["choices"]
        if choices:
            opts = list(choices)
            values[name] = box.selectbox(name, opts, index=opts.index(default) if default in opts else 0,
                                         help=help_text, key=key)
        elif t is bool:
            values[name] = box.checkbox(name, value=bool(default), help=help_text, key=key)
        elif t is int:
            kw: dict[str, Any] = {"step": 1}
            if lo is not None:
                kw["min_value"] = int(math.ceil(lo))
            if hi is not None:
                kw["max_value"] = int(math.floor(hi))
            values[name] = int(box.number_input(name, value=int(default), help=help_text, key=key, **kw))
        elif t is float:
            kw = {"format": _number_format(float(default), bool(f.get("log")))}
            if lo is not None:
                kw["min_value"] = float(lo)
            if hi is not None:
                kw["max_value"] = float(hi)
            step = abs(float(default)) / 10 if default else 0.01
            values[name] = float(box.number_input(name, value=float(default), step=step or 0.01, help=help_text,
                                                  key=key, **kw))
        elif typing.get_origin(t) in (tuple, list) or t in (tuple, list):
            text = ",".join(str(v) for v in (default or []))
            values[name] = box.text_input(name, value=text, help=(help_text or "") + " (comma-separated)", key=key)
        else:
            values[name] = box.text_input(name, value=str(default), help=help_text, key=key)
    return values


def changed_values(method: str, family: str | None, values: dict[str, Any]) -> dict[str, Any]:
    """Only the values that differ from the method's defaults for ``family`` (kept small in the run
    config; the defaults are recorded by the run anyway)."""
    from mixunlearn.methods import config_to_dict, make_config

    defaults = config_to_dict(make_config(method, family))
    out = {}
    for k, v in values.items():
        d = defaults.get(k)
        if isinstance(d, list):
            d = ",".join(str(x) for x in d)
        if v != d:
            out[k] = v
    return out


def confirm_button(label: str, key: str, *, disabled: bool = False, help: str | None = None,
                   on_click: Callable[[], None] | None = None, primary: bool = True) -> bool:
    return st.button(label, key=key, disabled=disabled, help=help, type="primary" if primary else "secondary",
                     on_click=on_click)
