"""Generator: for MixUnlearn runs, what the MixBlock generator produces -- per probe pair the
forget image, the retain image, the mask (fixed 0-1 scale), the mixed image and the vanilla
λ-mix, with λ and the model's prediction -- with a slider over the generator snapshots; the
generator's health over its updates (share error, share-vs-λ slope, spatial std, adversarial
gain); debug views of one probe pair (value maps, logit difference, mask, attention); and the
curves of L_gen, L_mix, L_real and the mean mask share."""

from __future__ import annotations

from ui.shell import take_over_navigation

take_over_navigation()  # first: app.py's navigation runs before any page (ui/shell.py)

import streamlit as st

from mixunlearn import analysis, figures
from mixunlearn.methods import method_names
from ui import widgets

_HEALTH_HELP = {
    "share_err": "Mean |share − λ| over the probe pairs and λs: 0 = the mask's forget share is exactly λ.",
    "share_slope": "Least-squares slope of the mask's share against λ: 1 = tied to λ, 0 = deaf to λ.",
    "std_mid": "The mask's mean spatial standard deviation at λ = 0.5: 0 = a flat blend, no spatial structure.",
    "gain_retain": "SimLoss to the retain target of the fixed network's output on the MixBlock mix minus on a "
                   "plain blend of the same share: > 0 = the mix looks less like retain than the blend.",
    "gain_forget": "Sign-flipped SimLoss to the forget target, mix vs plain blend of the same share: > 0 = the "
                   "mix looks more like forget than the blend.",
}

st.title("Generator")
st.caption("MixUnlearn's generator mixes a forget image x_f and a retain image x_r with a per-pixel mask M (the "
           "forget share, shown on a fixed 0–1 scale). It is trained adversarially to make mixes the unlearner "
           "still reads as the forget class; the unlearner learns to move them to the retain target. The vanilla "
           "λ-mix λ·x_f + (1−λ)·x_r is shown for contrast. The pairs shown are the generator's own (random) pairs; "
           "with runner-up pairing the unlearner applies its masks to each forget image and a retain image of the "
           "class the original model ranks second for it (the default: where a whole class is forgotten, and for "
           "the 2-conv CNN everywhere; docs/mixunlearn.md).")
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
            elif any(m in ran for m in ("mixunlearn", "mixunlearn_agnostic")) and not (row.results or {}).get("app"):
                st.info("This run was stored with its metrics only (e.g. by `python -m mixunlearn run --store`), "
                        "without the generator's snapshots. Run the same setup from the Unlearn page to see them "
                        "here; the playground below works on this run as it is.")
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
            health = analysis.snapshot_health(snap)
            if health:
                cols = st.columns(len(health))
                for col, (k, v) in zip(cols, health.items()):
                    col.metric(figures.HEALTH_TITLES[k], f"{v:+.3f}" if k.startswith("gain") else f"{v:.3f}",
                               help=_HEALTH_HELP[k])
            st.plotly_chart(figures.generator_grid(snap, li, class_names=class_names), key=f"gen-grid-{run_id}")
            if any(analysis.snapshot_health(s) for s in snaps):
                st.subheader("Generator health")
                st.plotly_chart(figures.generator_health_curves(snaps, selected_update=snap.get("update")),
                                key=f"gen-health-{run_id}")
                st.caption("One point per snapshot; the dashed line is the snapshot picked above. A healthy generator "
                           "keeps the share error small and the slope near 1 (the mask follows λ), has a spatial "
                           "std above 0 (a real mask, not a flat blend) and a positive adversarial gain (its mixes "
                           "are harder for the fixed network than a plain blend of the same share).")
            if analysis.has_debug_views(snap):
                lam_d = float(snap.get("debug_lam", 0.5))
                st.subheader(f"Debug views at λ = {lam_d:g}")
                n_pairs = len(snap["debug_value_f"])
                cls = (lambda c: class_names[c] if class_names and 0 <= c < len(class_names) else str(c))
                pairs = {k: f"pair {k}" + (f": {cls(int(snap['f_cls'][k]))} + {cls(int(snap['r_cls'][k]))}"
                                           if "f_cls" in snap and "r_cls" in snap else "") for k in range(n_pairs)}
                pair = st.selectbox("Probe pair (forget + retain class)", list(pairs), format_func=pairs.get,
                                    key=f"debug-pair-{run_id}-{method}")
                st.plotly_chart(figures.generator_debug_figure(snap, pair), key=f"gen-debug-{run_id}")
                st.caption("**Value maps** (red > 0 > blue): the MixBlock's per-position score of each image. "
                           "Each logit is an attention-weighted average of its image's values (m_i of v_f, m_j of "
                           "v_r), so the value maps decide where the forget image wins; two flat value maps give a "
                           "flat mask whatever the attention does. **Logit difference** m_i − m_j: > 0 where the "
                           "forget image takes the pixel; the mask is its sigmoid after upsampling (then the share "
                           "projection, when on). **Mask**: the forget share at this λ, fixed 0–1 scale.")
                st.caption("**Attention A_f**: row p is where forget position p looks in the retain image (rows "
                           "sum to 1). A flat matrix (every entry ≈ 1/P) means every position averages all values, "
                           "so the logits and the mask come out flat. **Attention received**: the column mean × P "
                           "as an image, where the forget positions look in the retain image (1 = uniform).")
            if not analysis.snapshot_health(snap) or not analysis.has_debug_views(snap):
                st.caption("This snapshot has no generator health numbers or debug views: the run was stored "
                           "before MixUnlearn recorded them. Run MixUnlearn again to see them.")
            hist = analysis.history_from_tensors(tensors, method)
            if hist:
                st.plotly_chart(figures.generator_curves(hist, title="training curves"), key=f"gen-curves-{run_id}")
            st.caption(f"{len(snaps)} snapshots of {display.get(method, method)}; probe pairs are fixed for the run. "
                       "'share' is the mask's mean forget share; 'pred' is the unlearner's top class on the mix; "
                       "p_f / p_r its probabilities of the forget / retain sample's class.")
if picked is not None:  # the playground: MixUnlearn again on this run's task with other generator settings
    from ui.playground import playground_panel

    with widgets.guarded("the playground"):
        playground_panel(*picked)
