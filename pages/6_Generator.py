"""Generator: for MixUnlearn runs, what the MixBlock generator produces -- per probe pair the
forget image, the retain image, the mask (fixed 0-1 scale), the mixed image and the vanilla
λ-mix, with λ and the model's prediction -- with a slider over the generator snapshots, and
the curves of L_gen, L_mix, L_real and the mean mask share."""

from __future__ import annotations

import streamlit as st

from mixunlearn import analysis, figures
from mixunlearn.methods import method_names
from ui import widgets

st.title("Generator")
st.caption("MixUnlearn's generator mixes a forget image x_f and a retain image x_r with a per-pixel mask M (the "
           "forget share, shown on a fixed 0–1 scale). It is trained adversarially to make mixes the unlearner "
           "still reads as the forget class; the unlearner learns to move them to the retain target. The vanilla "
           "λ-mix λ·x_f + (1−λ)·x_r is shown for contrast.")
picked = widgets.require_run("on the Generator page")
if picked is not None:
    run_id, row, tensors = picked
    with widgets.guarded("the generator view"):
        app = (row.results or {}).get("app", {})
        display = app.get("display", {})
        class_names = app.get("class_names") or None
        methods = analysis.snapshot_methods(tensors)
        if not methods:
            ran = list((row.results or {}).get("methods", {}))
            if "mixunlearn" not in method_names() and "mixunlearn_agnostic" not in method_names():
                st.info("MixUnlearn is not available in this installation, so there are no generator snapshots.")
            elif any(m in ran for m in ("mixunlearn", "mixunlearn_agnostic")):
                st.info("This run's MixUnlearn used no generator (e.g. the vanilla mixer or L_mix switched off), so "
                        "there is nothing to show here.")
            else:
                st.info("This run has no MixUnlearn method, so there are no generator snapshots. Run MixUnlearn "
                        "(it is preselected on the Unlearn page) or the default demo on the Home page.")
                widgets.link("unlearn", "Unlearn: run MixUnlearn")
        else:
            method = methods[0]
            if len(methods) > 1:
                method = st.radio("Method", methods, format_func=lambda m: display.get(m, m), horizontal=True,
                                  key="generator_method")
            snaps = analysis.snapshots_from_tensors(tensors, method)
            if len(snaps) > 1:
                i = st.select_slider("Generator snapshot", options=list(range(len(snaps))), value=len(snaps) - 1,
                                     format_func=lambda k: f"update {snaps[k].get('update')} "
                                                           f"(step {snaps[k].get('step')})",
                                     key=f"snapshot-{run_id}-{method}")
            else:
                i = 0
                st.caption("One snapshot was taken in this run.")
            snap = snaps[i]
            lams = [float(v) for v in snap["lams"].tolist()]
            li = st.radio("λ (the mixing ratio fed to the generator)", list(range(len(lams))),
                          index=min(1, len(lams) - 1), format_func=lambda k: f"{lams[k]:g}", horizontal=True,
                          key=f"lambda-{run_id}-{method}")
            collapse = analysis.mask_collapse(snap)
            if collapse == "forget":
                st.warning("Collapse: every mask gives the forget image nearly all the pixels (share > 0.95).")
            elif collapse == "retain":
                st.warning("Collapse: every mask gives the retain image nearly all the pixels (share < 0.05).")
            st.plotly_chart(figures.generator_grid(snap, li, class_names=class_names), key=f"gen-grid-{run_id}")
            hist = analysis.history_from_tensors(tensors, method)
            if hist:
                st.plotly_chart(figures.generator_curves(hist, title="training curves"), key=f"gen-curves-{run_id}")
            st.caption(f"{len(snaps)} snapshots of {display.get(method, method)}; probe pairs are fixed for the run. "
                       "'share' is the mask's mean forget share; 'pred' is the unlearner's top class on the mix; "
                       "p_f / p_r its probabilities of the forget / retain sample's class.")
