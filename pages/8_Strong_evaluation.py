"""Strong evaluation: per-example forgetting quality from pools of N retrained and N unlearned
models (the NeurIPS 2023 challenge's ε and score), a U-LiRA-style attack, relearn time and a
linear probe, for the session's task. Layout only: the work is in mixunlearn.strong_eval."""

from __future__ import annotations

from ui.shell import take_over_navigation

take_over_navigation()  # first: app.py's navigation runs before any page (ui/shell.py)

import streamlit as st

from mixunlearn import jobs
from mixunlearn.datasets import get_info
from mixunlearn.estimate import format_seconds
from mixunlearn.strong_eval import POOL_MAX, POOL_MIN
from mixunlearn.training import default_recipe
from ui import state, widgets
from ui import strong_eval as sev
from ui.progress import show_job

st.title("Strong evaluation")
st.caption("Is a forget example really forgotten? Train N models from scratch without D_f and run each method N "
           "times with other seeds; then, per forget example, test how well its confidence tells the two pools "
           "apart (the NeurIPS 2023 Machine Unlearning Challenge's ε and score). Relearn time and a linear probe "
           "check whether the knowledge is still there.")

job = sev.job()  # this tab's evaluation, also after a reload (the URL holds its token)
with widgets.guarded("the settings"):
    s = state.setup()
    info = get_info(s["dataset"])
    st.markdown(f"Task: **{info.title}**, forget **`{state.forget_spec_text(s)}`**, seed **{s['seed']}**, "
                f"device **{s['device']}**.")
    widgets.link("setup", "Change the task on the Setup page")
    names, display = sev.method_choices(s["kind"])
    methods = st.multiselect("Methods", names, default=[m for m in sev.DEFAULT_METHODS if m in names],
                             format_func=lambda m: display.get(m, m), key="se_methods",
                             help="Each is run N times from the same original model, each run with its own seed; "
                                  "'Retrain, other seeds' is the sanity row (near the top score).")
    c1, c2 = st.columns(2)
    pool = int(c1.number_input("Pool size N (models per pool)", min_value=1, max_value=10_000, value=8, step=1,
                               key="se_pool", help=f"{POOL_MIN}…{POOL_MAX}; the challenge used 512. Retrained "
                                                   "models are cached and reused: a pool of 32 starts with the 16."))
    recipe_epochs = default_recipe(info.name).epochs if info.name else None
    epochs = int(c2.number_input("Training epochs (0 = the recipe's)", min_value=0, max_value=10_000, value=0,
                                 step=1, key="se_epochs",
                                 help=f"Epochs of the original and every retrained model (recipe: {recipe_epochs}). "
                                      "Fewer is quicker and only for a first look."))
    with st.expander("Relearn and probe settings"):
        depth = int(st.number_input("Models per pool given the relearn and probe checks", 0, 10_000, 3, 1,
                                    key="se_depth_models"))
        cap = int(st.number_input("Relearn: most fine-tuning steps", 1, 1_000_000, 500, 1, key="se_cap"))
    cfg = sev.config(s, methods, pool, epochs, depth, cap)
    why = sev.problem(cfg)
    est = None
    if why:
        st.error(why)
    else:
        est, note = sev.estimate(cfg)
        if est is not None:
            parts = ", ".join(f"{k} {format_seconds(v)}" for k, v in est.parts.items() if v >= 0.5)
            st.info(f"Estimated time: **about {est.text()}** on this machine ({parts}). {est.to_train} retrained "
                    f"models to train ({est.cached} in the cache already)"
                    + (f", {est.batch} at a time" if est.batch > 1 else "")
                    + ". From a few steps timed on this machine"
                    + (f" at a load average of {est.load:.1f} on {est.cores} cores" if est.load is not None else "")
                    + "; other work on the machine can change it either way.", icon=":material/timer:")
        elif note:
            st.caption(note)
    busy = sev.running()
    if st.button("Start the evaluation", key="se_start", type="primary", disabled=busy,
                 help="Runs in the background; you can move between pages while it runs."):
        if sev.start(cfg, est) is not None:
            st.rerun()

st.subheader("Progress")
with widgets.guarded("the progress"):
    shown = show_job(sev.K_JOB, titles=sev.progress_titles(), curves=False)
    if shown is None:
        st.caption("No evaluation started in this session yet.")

if shown is not None and shown.view(with_history=False).state == jobs.DONE and isinstance(shown.result, dict):
    with widgets.guarded("the results"):
        sev.results(shown.result)
