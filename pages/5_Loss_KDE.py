"""Loss KDE: per model, densities of per-sample cross-entropy for the forgotten training
samples, unseen test samples of the same class(es) and retained samples (the paper's Fig. 4),
plus one number for how distinguishable forgotten and unseen samples are."""

from __future__ import annotations

from ui.shell import take_over_navigation

take_over_navigation()  # first: app.py's navigation runs before any page (ui/shell.py)

import pandas as pd
import streamlit as st

from mixunlearn import analysis, figures
from ui import state, widgets


@st.cache_resource(show_spinner=False, max_entries=4)
def _curves(run_id: str, models: tuple[str, ...]):
    _, tensors = state.load_run(run_id)
    pack = analysis.AnalysisPack.from_tensors(tensors, list(models))
    curves = {m: analysis.kde_curves(analysis.loss_sets(pack, m)) for m in pack.models}
    return pack, curves, analysis.loss_summary(pack)


st.title("Loss KDE")
st.caption("If a model has truly forgotten D_f, its losses on the forgotten training samples look like its losses on "
           "samples it never saw (unseen test samples of the same classes): the red and blue curves overlap, as "
           "for Retrain. A red curve far left of the blue one means D_f is still remembered; far right means it "
           "was pushed away harder than unseen data (itself a membership signal).")
picked = widgets.require_run("on the Loss KDE page", analysis=True)
if picked is not None:
    run_id, row, tensors = picked
    with widgets.guarded("the loss densities"):
        app = (row.results or {}).get("app", {})
        display = app.get("display", {})
        pack, curves, summary = _curves(run_id, tuple(app.get("models") or ()))
        by_model = {r["model"]: r for r in summary}
        notes = {m: f"AUC {by_model[m]['auc']:.2f} · distinguishability {by_model[m]['distinguishability']:.2f}"
                 for m in pack.models if by_model[m]["auc"] == by_model[m]["auc"]}
        st.plotly_chart(figures.kde_grid_figure(curves, titles=display, set_titles=analysis.LOSS_SET_TITLES,
                                                notes=notes), key=f"kde-{run_id}")
        target = by_model.get("retrain", {}).get("distinguishability")
        rows = []
        for m in pack.models:
            r = by_model[m]
            rows.append({"model": display.get(m, m), "median loss D_f": r["median_forget"],
                         "median loss unseen": r["median_unseen"], "median loss D_r": r["median_retain"],
                         "membership AUC": r["auc"], "distinguishability": r["distinguishability"],
                         "|Δ| to Retrain": (abs(r["distinguishability"] - target) if target is not None else None)})
        st.dataframe(pd.DataFrame(rows), hide_index=True, key="kde_table", column_config={
            "membership AUC": st.column_config.NumberColumn(
                help="P(loss of a random unseen sample > loss of a random forgotten sample), ties count half: "
                     "the AUC of a loss-threshold membership attack. 0.5: indistinguishable.", format="%.3f"),
            "distinguishability": st.column_config.NumberColumn(
                help="max(AUC, 1 − AUC): how well the best loss threshold separates D_f from unseen samples, in "
                     "either direction (0.5 = not at all, 1 = perfectly). Retrain's value is the target.",
                format="%.3f"),
        })
        st.caption(f"Losses on {len(pack.forget_idx)} forgotten, {int(pack.unseen_mask.sum())} unseen and "
                   f"{len(pack.retain_idx)} retained samples (fixed subsets, the same for every model); densities of "
                   f"log10(loss), drawn on a log axis.")
