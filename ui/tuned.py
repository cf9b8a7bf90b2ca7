"""Tuned settings in the app: the shipped-or-tuned choice per method on the Unlearn page, and a
study's history and parameter importances (Optuna's own Plotly figures).

Tuning results are read from ``$MIXUNLEARN_HOME/tuned/DATASET/RECIPE/LEVEL/METHOD.json`` (and the
study, ``METHOD.db``), where ``python -m mixunlearn tune ... --publish`` copies them
(mixunlearn.tune.publish)."""

from __future__ import annotations

from typing import Any

import streamlit as st

from mixunlearn import tune


def settings_choice(method: str, dataset: str, recipe: str, level: str, key: str) -> dict[str, Any] | None:
    """A "shipped / tuned" choice when a tuning result is published for this method and task;
    returns the tuned params when "tuned" is chosen, else None."""
    found = tune.published(dataset, recipe, level).get(method)
    if found is None:
        return None
    choice = st.radio("Settings", ["shipped", "tuned"], horizontal=True, key=key,
                      help="'tuned': the best trial of an Optuna study on the validation split "
                           "(python -m mixunlearn tune); 'shipped': the method's defaults.")
    gap, shipped = found.get("gap"), found.get("shipped_gap")
    note = f"Tuned over {tune.trials_counted(found)} trials (seeds {found.get('seeds', '?')}, {found['forget']})"
    if gap is not None and shipped is not None:
        note += f": validation gap {gap:.2f} vs {shipped:.2f} shipped"
    st.caption(note + ".")
    return dict(found["params"]) if choice == "tuned" else None


def study_section(dataset: str, recipe: str, level: str) -> None:
    """The published studies of this task: pick a method, see its optimisation history and which
    parameters mattered."""
    found = tune.published(dataset, recipe, level)
    if not found:
        st.caption(f"No tuning result is published for {dataset} ({recipe}, {level}-level). "
                   "Tune one with `python -m mixunlearn tune ... --publish`.")
        return
    method = st.selectbox("Study", sorted(found), key="tuned_study_method")
    study = tune.load_published_study(dataset, recipe, level, method)
    if study is None:
        st.caption("Only the best settings were published (no study file).")
        return
    figs = tune.study_figures(study)
    st.plotly_chart(figs["history"], key="tuned_history")
    if figs["importances"] is not None:
        st.plotly_chart(figs["importances"], key="tuned_importances")
    else:
        st.caption("Parameter importances need at least two complete trials with different results.")
