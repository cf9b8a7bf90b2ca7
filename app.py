"""MixUnlearn lab: the Streamlit app. Start it with ``streamlit run app.py``.

This file is the entry point (navigation, shared sidebar) and the Home page. The other pages
live in ``pages/``; each, like main() here, first leaves Streamlit's legacy multipage mode
(ui/shell.py), so the first page opened after a server start still runs through main().
Streamlit-aware helpers in ``ui/``; all logic in the ``mixunlearn`` library.
"""

from __future__ import annotations

import os
from pathlib import Path

# Before torch loads OpenMP (the mixunlearn imports below): spinning worker threads make CPU runs
# several times slower on shared cores (as in mixunlearn/cli.py and the tests).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import streamlit as st  # noqa: E402

from mixunlearn import jobs
from mixunlearn.plugins import load_home_plugins
from ui import actions, shutdown, state, widgets
from ui.progress import show_job, sidebar_status
from ui.shell import take_over_navigation

ROOT = Path(__file__).resolve().parent
HOME_PICTURE = ROOT / "assets" / "home.png"


def home() -> None:
    st.title("MixUnlearn lab")
    st.caption("Machine unlearning you can run, watch and compare — on a laptop, offline.")
    left, right = st.columns([3, 2])
    with left:
        st.markdown(
            "**Machine unlearning** removes the influence of some training data — the *forget set* "
            "D_f, say every image of one class — from a model that was trained on it, so that the result "
            "behaves like a model trained only on the rest, the *retain set* D_r. Retraining from scratch "
            "on D_r (**Retrain**) does exactly that and is the yardstick of every number here, but it "
            "costs a full training run; approximate methods start from the trained model instead and "
            "must land as close to Retrain as they can, quickly."
        )
        st.markdown(
            "**Catastrophic unlearning** is what goes wrong: pushing a model away from D_f also drags it "
            "away from what it should keep, above all near the boundary between forgotten and retained "
            "data, and its accuracy on D_r collapses. MixUnlearn (Peng, Tang & Yang, ICLR 2025) regularises "
            "unlearning with *mixup*: a generator mixes forget and retain images adversarially into hard "
            "samples on that boundary, and the model learns to keep the retained knowledge there. The "
            "picture shows the idea on a 2-D toy (try it on the **Learn** page)."
        )
    with right:
        if HOME_PICTURE.is_file():
            st.image(str(HOME_PICTURE), caption="Forgetting the red-ringed blob of a 2-D toy. Gradient ascent on "
                     "it plus ordinary training on retained points (middle) lets one class swallow the plane; the "
                     "same push regularised with forget/retain mixes (right) keeps the retained boundary.")

    st.subheader("Run the default demo")
    with widgets.guarded("the demo"):
        st.markdown(
            f"Digits (8×8, ships with scikit-learn, works offline), forget class {jobs.DEMO_FORGET.split(':')[1]}, "
            f"seed {jobs.DEMO_SEED}; methods: **{', '.join(jobs.DEMO_METHODS)}**. It trains the original model "
            "and Retrain, unlearns, scores everything against Retrain and prepares every page. The first run trains "
            "the two small models (fast recipe); later runs reuse them."
        )
        # The button is drawn before anything slow (torch, the data, the timed probe of the estimate),
        # so it answers at once; the estimate fills the line under it later in the same run.
        clicked = st.button("Run the default demo", key="demo_button", icon=":material/play_arrow:",
                            type="primary", disabled=actions.experiment_running(),
                            help="Runs in the background; you can move between pages while it runs.")
        note = st.empty()
        if not clicked:
            note.caption("Estimating the demo's time on this machine…")
        demo = jobs.demo_config(state.setup().get("device", "auto"))
        if "mixunlearn" not in demo.methods:
            st.warning("MixUnlearn is not available in this installation yet; the demo runs Retrain and the "
                       "baselines only.")
        est = actions.estimate(demo, projections=len(demo.methods) + 1)
        if clicked:
            job = actions.start_experiment(demo, "Default demo", estimate_s=est.seconds if est else None)
            if job is not None:
                st.rerun()
        note.empty()
        actions.estimate_caption(est, "demo")
        # Progress bars only: the live curves are on the Unlearn page (redrawing them every second costs CPU).
        job = show_job(state.K_EXPERIMENT_JOB, curves=False, on_done=actions.select_finished_run)
        if job is not None and job.view(with_history=False).state == jobs.DONE:
            st.markdown("**Results are ready:**")
            cols = st.columns(4)
            for col, page in zip(cols, ("compare", "embeddings", "kde", "generator")):
                with col:
                    widgets.link(page)

    st.subheader("Current experiment")
    with widgets.guarded("the current experiment"):
        s = state.setup()
        st.markdown(f"Setup of this session: dataset **{s['dataset']}**, forget **{state.forget_spec_text(s)}**, "
                    f"seed **{s['seed']}**, device **{s['device']}**. Change it on the **Setup** page.")
        run_id = state.current_run_id()
        if run_id is None and actions.experiment_running():
            st.info("No finished run yet: the run above is still in progress; its results appear here when it ends.")
        elif run_id is None:
            st.info("No finished run yet: start the demo above, or go to Setup → Unlearn.")
        else:
            row, _ = state.load_run(run_id)
            methods = ", ".join(k for k in (row.results or {}).get("methods", {}))
            st.markdown(f"Run shown on the analysis pages: **{row.title}** — methods: {methods}.")
            widgets.link("compare", "Open the comparison")


def main() -> None:
    take_over_navigation()
    st.set_page_config(page_title="MixUnlearn lab", page_icon=":material/auto_fix_high:", layout="wide")
    nav = [st.Page(home, title="Home", icon=widgets.PAGES["home"][2], default=True, url_path="home")]
    nav += [st.Page(path, title=title, icon=icon) for key, (path, title, icon) in widgets.PAGES.items()
            if key != "home"]
    nav.append(st.Page("pages/8_Strong_evaluation.py", title="Strong evaluation", icon=":material/verified:"))
    page = st.navigation(nav)
    shutdown.install()  # once per process: Ctrl-C / SIGTERM end the server at once
    widgets.HOME_PAGE = nav[0]
    # Every page needs the home folder (model cache, run store) except the Learn page's toy: when it
    # cannot be used, say so once, naming MIXUNLEARN_HOME, instead of failing inside each page.
    problem = state.home_problem()
    if problem and page.title != widgets.PAGES["learn"][1]:
        st.error(problem, icon=":material/folder_off:")
        return
    # $MIXUNLEARN_HOME/plugins/*.py: their methods join the registry (Setup lists them); with no
    # plugin files this imports nothing heavy, so the first paint stays quick
    if not problem:  # (the Learn page's toy runs without a usable home: no plugins then)
        load_home_plugins()
    state.reattach_jobs()  # a reloaded tab finds its running job through the URL
    sidebar_status(state.K_EXPERIMENT_JOB)
    try:
        page.run()
    finally:  # after the page's first paint (it imports pandas, then compiles in the background)
        state.warm_up_projections()  # once per process


main()
