"""Embeddings: penultimate features of test samples for the original, Retrain and each method,
projected into one shared frame (UMAP, t-SNE or PCA), the forgotten class highlighted; a box or
lasso selection shows the selected images with labels, predictions and losses."""

from __future__ import annotations

from ui.shell import take_over_navigation

take_over_navigation()  # first: app.py's navigation runs before any page (ui/shell.py)

import numpy as np
import streamlit as st

from mixunlearn import analysis, figures
from ui import actions, state, widgets
from ui.progress import show_job


@st.cache_resource(show_spinner=False, max_entries=4)
def _pack(run_id: str, models: tuple[str, ...]):
    _, tensors = state.load_run(run_id)
    return analysis.AnalysisPack.from_tensors(tensors, list(models))


st.title("Embeddings")
st.caption("Each model's penultimate features of the same test samples, projected on its own and aligned into "
           "the original model's frame (same seed and settings; rotation, reflection and scale removed by "
           "Procrustes on the shared samples), so positions are comparable across panels. The forgotten class "
           "is red. Select points with the box or lasso tool to see them.")
picked = widgets.require_run("on the Embeddings page", analysis=True)
if picked is not None:
    run_id, row, tensors = picked
    with widgets.guarded("the embeddings"):
        app = (row.results or {}).get("app", {})
        display = app.get("display", {})
        class_names = app.get("class_names") or []
        pack = _pack(run_id, tuple(app.get("models") or ()))
        method = st.radio("Projection", list(analysis.PROJECTIONS), format_func=analysis.PROJECTION_TITLES.get,
                          horizontal=True, key="projection_method")
        cached = state.store().load_artifact(run_id, f"proj-{method}")
        exp = state.job(state.K_EXPERIMENT_JOB)
        finishing = (cached is None and exp is not None and exp.run_id == run_id and method == "umap"
                     and exp.view(with_history=False).active)
        if finishing:  # the run's own job is computing this projection right now
            st.info("The run is saved; its UMAP projection is being computed now.")
            show_job(state.K_EXPERIMENT_JOB, curves=False, cancel=False, on_done=actions.select_finished_run)
        elif cached is None or any(m not in cached for m in pack.models):
            key = actions.projection_job_key(run_id, method)
            job = state.job(key)
            if job is None or job.view(with_history=False).state in ("failed", "cancelled"):
                if job is not None and job.view(with_history=False).state == "failed":
                    st.error(f"The last projection failed: {job.error}")
                if job is None:
                    actions.start_projection(run_id, method, pack.features, int((row.config or {}).get("seed", 0)))
            st.info(f"Computing the {analysis.PROJECTION_TITLES[method]} projection of this run (once; it is cached "
                    f"with the run). The first UMAP in a fresh app process also compiles its kernels (~15 s).")
            shown = show_job(key, curves=False, cancel=False)
            if shown is not None and shown.view(with_history=False).state == "done":
                # It finished before this draw (a PCA takes well under a second), so the poll that
                # redraws the page on completion never ran: draw the stored projection now.
                done = state.store().load_artifact(run_id, f"proj-{method}")
                if done is not None and all(m in done for m in pack.models):
                    st.rerun()
        else:
            layouts = {m: cached[m].numpy() for m in pack.models}
            preds = {m: analysis.test_predictions(pack, m) for m in pack.models}
            losses = {m: analysis.test_losses(pack, m) for m in pack.models}
            y = pack.y_test.numpy()
            cname = (lambda c: class_names[c] if 0 <= c < len(class_names) else str(c))
            hover = {m: [f"#{i} · label {cname(int(y[i]))} · pred {cname(int(preds[m][i]))} · "
                         f"loss {losses[m][i]:.3g}" for i in range(len(y))] for m in pack.models}
            fig = figures.embedding_grid(layouts, y, pack.forget_classes, titles=display, class_names=class_names,
                                         hover=hover)
            event = st.plotly_chart(fig, on_select="rerun", selection_mode=("box", "lasso"),
                                    key=f"embedding-{run_id}-{method}")
            points = []
            try:
                points = list(event.selection.points) if event is not None else []
            except AttributeError:
                points = []
            if not points:
                st.caption("Tip: drag a box or lasso over points in any panel to see those samples.")
            else:
                chosen = figures.selected_samples(points)
                images = pack.test_images()
                for panel, idx in sorted(chosen.items()):
                    model = pack.models[panel] if panel < len(pack.models) else None
                    if model is None:
                        continue
                    n_sel, idx = len(idx), idx[:40]
                    st.markdown(f"**{display.get(model, model)}** — {n_sel} selected (showing {len(idx)})")
                    caps = [f"y {cname(int(y[i]))} · ŷ {cname(int(preds[model][i]))}<br>loss {losses[model][i]:.2f}"
                            for i in idx]
                    st.plotly_chart(figures.image_grid(images[np.array(idx)], caps, max_cols=10),
                                    key=f"selected-{run_id}-{method}-{panel}")
