"""Unlearn: choose methods and their hyper-parameters (generated from the config dataclasses;
shipped or, where a tuning result is published, tuned), run in the background, watch progress,
losses and probe accuracies live, cancel."""

from __future__ import annotations

from ui.shell import take_over_navigation

take_over_navigation()  # first: app.py's navigation runs before any page (ui/shell.py)

import streamlit as st

from mixunlearn import jobs
from mixunlearn.data import parse_forget_spec
from mixunlearn.datasets import get_info
from mixunlearn.experiment import ExperimentConfig
from mixunlearn.methods import list_methods
from mixunlearn.models import MODELS
from mixunlearn.training import budget_profile, default_recipe
from ui import actions, state, tuned, widgets
from ui.progress import show_job

st.title("Unlearn")
s = state.setup()
chosen: list[str] = []  # (what the tuning studies below open on, should the method choice fail)
display: dict[str, str] = {}

with widgets.guarded("the method choice"):
    info = get_info(s["dataset"])
    model = s.get("model") or info.default_model
    recipe_choice = s.get("recipe") or default_recipe(s["dataset"]).name
    family = budget_profile(MODELS[model].builder.family, recipe_choice) if model in MODELS else None
    spec_text = state.forget_spec_text(s)
    kind = s["kind"]
    recipe_name = s.get("recipe") or default_recipe(s["dataset"]).name
    level = parse_forget_spec(spec_text).level
    st.markdown(f"Task: **{info.title}**, model **{model}**, recipe **{recipe_name}**, "
                f"forget **`{spec_text}`**, seed **{s['seed']}**, device **{s['device']}**.")
    widgets.link("setup", "Change the task on the Setup page")

    specs = [m for m in list_methods() if m.name != "retrain"]
    usable = [m for m in specs if kind in m.kinds]
    disabled = [m for m in specs if kind not in m.kinds]
    display = {m.name: m.display for m in specs}
    default = [m.name for m in usable if m.name == "mixunlearn"]  # MixUnlearn preselected
    chosen = st.multiselect(
        "Methods (Retrain always runs first: it is the yardstick)", [m.name for m in usable], default=default,
        format_func=lambda n: f"{display[n]} ({n})", key="unlearn_methods",
        help="Label-aware methods read the labels of D_f and D_r; label-agnostic ones do not.",
    )
    if disabled:
        st.caption("Not available for " + {"class": "class-level", "data": "data-level",
                                            "noisy": "noisy-label"}[kind] + " forgetting: "
                   + "; ".join(f"{m.display} (supports {', '.join(m.kinds)} only)" for m in disabled))
    with st.expander("What the methods do"):
        for m in specs:
            st.markdown(f"- **{m.display}** (`{m.name}`, label-{m.labels}): {m.summary}. *{m.paper}*")

    params: dict[str, dict] = {}
    for name in chosen:
        spec = next(m for m in specs if m.name == name)
        with st.expander(f"{spec.display} — hyper-parameters", expanded=False):
            st.caption(f"{spec.summary}. Defaults for the '{family}' model family are prefilled.")
            tuned_params = tuned.settings_choice(name, s["dataset"], recipe_name, level, key=f"tuned:{name}",
                                                 forget=spec_text)
            values = widgets.config_widgets(name, family, "hp:tuned" if tuned_params else "hp",
                                            prefill=tuned_params)
            changed = widgets.changed_values(name, family, values)
            if changed:
                params[name] = changed

    running = actions.experiment_running()
    cfg = ExperimentConfig(dataset=s["dataset"], forget=spec_text, methods=("retrain", *chosen), seed=s["seed"],
                           model=model, recipe=s.get("recipe"), device=s["device"],
                           data_root=s.get("data_root") or None, params=params, download=False)
    est = actions.estimate(cfg, projections=len(chosen) + 2) if chosen else None
    if st.button("Run unlearning", key="run_button", type="primary", disabled=running or not chosen,
                 help="Runs in the background; navigating away does not stop it."):
        if actions.start_experiment(cfg, label="Unlearning run", estimate_s=est.seconds if est else None) is not None:
            st.rerun()
    actions.estimate_caption(est, "run")
    if not chosen:
        st.info("Pick at least one method to run.")

with st.expander("Tuning studies (history and parameter importances)"):
    with widgets.guarded("the tuning studies"):
        tuned.study_section(s["dataset"], recipe_name, level, prefer=chosen, titles=display)

st.subheader("Progress")
with widgets.guarded("the progress"):
    titles = {m.name: m.display for m in list_methods()}
    job = show_job(state.K_EXPERIMENT_JOB, titles=titles, on_done=actions.select_finished_run)
    if job is None:
        st.caption("No run started in this session yet.")
    elif job.view(with_history=False).state == jobs.DONE:
        cols = st.columns(4)
        for col, page in zip(cols, ("compare", "embeddings", "kde", "generator")):
            with col:
                widgets.link(page)
