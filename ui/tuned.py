"""Tuned settings in the app: the shipped-or-tuned choice per method on the Unlearn page, and a
study's history and parameter importances (Optuna's own Plotly figures).

Tuning results are the project's own, which ship with the package (``mixunlearn/tuned/``, best
settings only), and the user's, read from ``$MIXUNLEARN_HOME/tuned/DATASET/RECIPE/LEVEL/METHOD.json``
(and the study, ``METHOD.db``), where ``python -m mixunlearn tune ... --publish`` copies them
(mixunlearn.tune.publish); the user's replace the shipped ones method by method."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import streamlit as st

from mixunlearn import tune


def settings_choice(method: str, dataset: str, recipe: str, level: str, key: str,
                    forget: str | None = None) -> dict[str, Any] | None:
    """A "shipped / tuned" choice when a tuning result is published for this method and task;
    returns the tuned params when "tuned" is chosen, else None. ``forget``: the task's forget spec,
    so the caption says when the study tuned on another one of the same level."""
    found = tune.published(dataset, recipe, level).get(method)
    if found is None:
        return None
    choice = st.radio("Settings", ["shipped", "tuned"], horizontal=True, key=key,
                      help="'tuned': the best trial of an Optuna study on the validation split "
                           "(python -m mixunlearn tune); 'shipped': the method's defaults.")
    gap, shipped = found.get("gap"), found.get("shipped_gap")
    by = "Tuned by MixUnlearn's own sweep" if found.get("bundled") else "Tuned"
    note = f"{by} over {tune.trials_counted(found)} trials (seeds {found.get('seeds', '?')}, {found['forget']})"
    if gap is not None and shipped is not None:
        note += f": validation gap {gap:.2f} vs {shipped:.2f} shipped"
    note += "."
    note += _test_sentence(found.get("test"))
    if forget and forget != found["forget"]:
        note += f" This task forgets {forget}: the tuned values are a starting point here, not a tuned result."
    st.caption(note)
    return dict(found["params"]) if choice == "tuned" else None


def _test_sentence(test: Any) -> str:
    """What the comparison's tables measured on the test split (shipped results carry it), or ""."""
    num = (int, float)
    if not isinstance(test, dict) or not all(isinstance(test.get(k), num) for k in ("tuned_gap", "shipped_gap")):
        return ""
    text = (f" On the test split (seeds {test.get('seeds', '?')}): gap {test['tuned_gap']:.2f} tuned vs "
            f"{test['shipped_gap']:.2f} shipped")
    floor = test.get("floor")
    return text + (f"; an independent Retrain scores {floor:.2f}." if isinstance(floor, num) else ".")


def study_section(dataset: str, recipe: str, level: str, prefer: Sequence[str] = (),
                  titles: Mapping[str, str] | None = None) -> None:
    """The published studies of this task: pick a method (it opens on the first of ``prefer``, the
    methods chosen on the page, that has a study), see its optimisation history and which
    parameters mattered."""
    found = tune.published(dataset, recipe, level)
    if not found:
        st.caption(f"No tuning result is published for {dataset} ({recipe}, {level}-level). "
                   "Tune one with `python -m mixunlearn tune ... --publish`.")
        return
    names = sorted(found)
    first = next((m for m in prefer if m in found), names[0])
    titles = titles or {}
    # A keyed selectbox keeps its value across reruns: follow the page's choice of methods when it
    # changes, and otherwise keep what the user picked here.
    if st.session_state.get("tuned_study_follows") != first or st.session_state.get("tuned_study_method") not in names:
        st.session_state["tuned_study_method"] = first
        st.session_state["tuned_study_follows"] = first
    method = st.selectbox("Study", names, key="tuned_study_method", format_func=lambda m: f"{titles.get(m, m)} ({m})")
    study = tune.load_published_study(dataset, recipe, level, method)
    if study is None:
        doc = found[method]
        if doc.get("bundled"):
            st.caption(f"MixUnlearn ships this method's best settings from its own sweep, not the study. Tune it "
                       f"yourself to see the history here: `python -m mixunlearn tune --dataset {dataset} "
                       f"--forget {doc['forget']} --method {method} --recipe {recipe} --trials 20 "
                       f"--seeds {','.join(map(str, doc.get('seeds') or [0]))} --out OUT --publish`.")
        else:
            st.caption("Only the best settings were published (no study file).")
        return
    figs = tune.study_figures(study)
    st.plotly_chart(figs["history"], key="tuned_history")
    if figs["importances"] is not None:
        st.plotly_chart(figs["importances"], key="tuned_importances")
    else:
        st.caption("Parameter importances need at least two complete trials with different results.")
