"""Compare: the metric table (Protocol B first, Protocol A second), Retrain first, gap to Retrain,
ToW and wall time; a chart of the same; the paper's reported rows where the setting matches; where
each method differs from Retrain (class-wise accuracy, prediction matrices, layer-wise CKA, the
membership attack's view); download of the run and of its offline report."""

from __future__ import annotations

from ui.shell import take_over_navigation

take_over_navigation()  # first: app.py's navigation runs before any page (ui/shell.py)

import io
import json
import zipfile

import pandas as pd
import streamlit as st

from mixunlearn import analysis, diagnostics, figures, jobs, paper, report
from mixunlearn.metrics import ALL_METRICS, METRIC_HELP, METRIC_SETS
from mixunlearn.store import StoreError
from ui import state, widgets

TITLES = {"test_r": "Test_r", "test_f": "Test_f", "train_r": "Train_r", "train_f": "Train_f", "test": "Test",
          "asr": "ASR", "mia_efficacy": "MIA-Eff.", "ua": "UA", "ra": "RA", "ta": "TA", "tow": "ToW",
          "tow_mia": "ToW-MIA"}


def metric_columns(level: str) -> tuple[list[str], list[str]]:
    primary = list(METRIC_SETS[level])
    secondary = [m for m in METRIC_SETS["A"] if m not in primary]
    return primary, secondary


def table(rows: list[dict], level: str, paper_rows: dict[str, paper.PaperRow] | None) -> pd.DataFrame:
    primary, secondary = metric_columns(level)
    records = []
    for r in rows:
        rec = {"method": r["display"], "source": "this run", "labels": r["labels"] or "—"}
        for m in primary:
            rec[TITLES[m]] = r.get(m)
        rec["gap to Retrain"] = r.get("gap")
        rec["ToW"] = r.get("tow")
        rec["ToW-MIA"] = r.get("tow_mia")
        rec["time (s)"] = r.get("seconds")
        for m in secondary:
            rec[TITLES[m]] = r.get(m)
        rec["status"] = r["status"] + (" (cached)" if r.get("cached") else "")
        records.append(rec)
        pr = (paper_rows or {}).get(r["method"])
        if pr is not None:
            prec = {"method": f"{r['display']} (paper)", "source": "reported in the paper", "labels": pr.labels}
            for m in primary:
                mean_std = pr.metrics.get(m)
                prec[TITLES[m]] = mean_std[0] if mean_std else None
            prec["gap to Retrain"] = pr.gap
            prec["status"] = "reported (mean of 5 seeds)"
            records.append(prec)
    return pd.DataFrame.from_records(records)


NOT_RECORDED = ("{what}: not recorded for this run (it was stored before these analyses existed, or without "
                "them); run the same setup again to see it.")


def where_they_differ(run_id: str, results: dict, tensors: dict) -> None:
    """Class-wise accuracy, prediction matrices, layer-wise CKA and the attack's view: every number
    was computed in the run (mixunlearn.diagnostics); this only lays them out."""
    shown = report.display_names(results)
    names = report.class_names(results)
    st.subheader("Where each method differs from Retrain")
    per_class = report.recorded(results, "per_class")
    st.markdown("**Class-wise test accuracy**")
    if "retrain" in per_class:
        st.caption("Each cell: the model's test accuracy on that class (%), coloured by its difference to Retrain's "
                   "(red: below Retrain, blue: above).")
        st.plotly_chart(figures.per_class_heatmap(per_class, titles=shown, class_names=names,
                                                  forget_classes=report.forget_classes(results)),
                        key="per_class_heatmap")
    else:
        st.info(NOT_RECORDED.format(what="Class-wise accuracy"))
    st.markdown("**Prediction matrix (true → predicted)**")
    mats = report.recorded(results, "prediction_matrix")
    if "retrain" in mats and len(mats) > 1:
        others = [m for m in mats if m != "retrain"]
        c1, c2 = st.columns(2)
        method = c1.selectbox("method", others, format_func=lambda m: shown.get(m, m), key="pm_method")
        split = c2.radio("examples", ["forget", "test"], horizontal=True, key="pm_split",
                         format_func={"forget": "forget set D_f", "test": "test split"}.get)
        st.plotly_chart(figures.prediction_matrices({"retrain": mats["retrain"][split], method: mats[method][split]},
                                                    titles=shown, class_names=names, max_cols=2),
                        key="prediction_matrix")
        st.caption("Rows: true class (labels as stored, so mislabelled examples count under their stored label); "
                   "cells: share of that class's examples predicted as each class, counts on hover.")
    else:
        st.info(NOT_RECORDED.format(what="Prediction matrices"))
    st.markdown("**Layer-wise similarity (linear CKA)**")
    cka = report.recorded(results, "cka")
    diag_info = (results.get("info") or {}).get("diagnostics") or {}
    if cka and diag_info.get("cka_layers"):
        st.plotly_chart(figures.cka_chart(cka, diag_info["cka_layers"], titles=shown), key="cka_chart")
        st.caption(f"Linear CKA of each block's output on {diag_info.get('cka_probe', '?')} fixed test images: 1 "
                   f"means the same representation up to rotation and scale. Retrain is trained from scratch, so "
                   f"even a perfect unlearner stays below 1 to Retrain in the later blocks.")
    else:
        st.info(NOT_RECORDED.format(what="Layer-wise similarity"))
    st.subheader("The membership attack's view")
    view = diagnostics.attack_view(tensors or {}, report.model_order(results))
    if view is None:
        st.info(NOT_RECORDED.format(what="The attack's per-example scores"))
        return
    st.caption("The ASR attacker of each model (trained on D_r vs half the test split) scores every example: "
               "P(member). Up to " f"{diagnostics.ATTACK_SUBSET} examples per set, fixed per seed; the dashed line "
               "is Retrain's median. A method that forgot D_f the way Retrain did gives D_f Retrain's scores.")
    st.plotly_chart(figures.attack_distributions(view.scores, titles=shown, set_titles=diagnostics.ATTACK_SET_TITLES),
                    key="attack_distributions")
    sets = list(view.indices)
    which = st.radio("example set", sets, horizontal=True, key="attack_set",
                     format_func=diagnostics.ATTACK_SET_TITLES.get)
    order = diagnostics.examples_by_disagreement(view, which)
    if not order:
        st.caption("This set has no examples.")
        return
    labels = view.labels[which]

    def label(pos: int) -> str:
        c = int(labels[pos])
        return (f"#{int(view.indices[which][pos])} (label {names[c] if names and c < len(names) else c}), "
                f"Retrain {view.scores.get('retrain', view.scores[view.models[0]])[which][pos]:.2f}")

    pos = st.selectbox("example (largest disagreement with Retrain first)", order, format_func=label,
                       key="attack_example")
    c1, c2 = st.columns([1, 4])
    img = view.images[which][pos]
    c1.image(diagnostics.enlarged(img),
             caption=label(pos).split(",")[0], width=140)
    c2.dataframe(pd.DataFrame(diagnostics.example_rows(view, which, pos, titles=shown)), hide_index=True,
                 key="attack_example_table",
                 column_config={k: st.column_config.NumberColumn(k, format="%.3f")
                                for k in ("loss (CE)", "attack score P(member)", "Δ score to Retrain")})


@st.cache_data(show_spinner=False, max_entries=2)
def report_html(run_id: str, results_json: str) -> bytes:
    _, tensors = state.load_run(run_id)
    return report.build_report(json.loads(results_json), tensors,
                               title=f"MixUnlearn run {run_id}").encode()


@st.cache_data(show_spinner=False, max_entries=4)
def download_zip(run_id: str, results_json: str, config_json: str, csv: str, level: str) -> bytes:
    results = json.loads(results_json)
    rows = [r for r in jobs.comparison_rows(results)]
    primary, secondary = metric_columns(level)
    figs = {"metrics (Protocol B)": figures.metrics_bar(rows, primary, titles=TITLES),
            "metrics (Protocol A)": figures.metrics_bar(rows, secondary, titles=TITLES),
            "gap to Retrain and time": figures.gap_bar([r for r in rows if r["method"] != "original"])}
    try:
        _, tensors = state.load_run(run_id)
        app = results.get("app", {})
        pack = analysis.AnalysisPack.from_tensors(tensors, app.get("models"))
        curves = {m: analysis.kde_curves(analysis.loss_sets(pack, m)) for m in pack.models}
        figs["loss KDE"] = figures.kde_grid_figure(curves, titles=app.get("display"),
                                                   set_titles=analysis.LOSS_SET_TITLES)
        cached = state.store().load_artifact(run_id, "proj-umap")
        if cached:
            layouts = analysis.projections_from_tensors(cached)
            figs["embeddings (UMAP)"] = figures.embedding_grid(layouts, pack.y_test.numpy(), pack.forget_classes,
                                                               titles=app.get("display"))
    except Exception:  # noqa: BLE001 - the download still has the tables and metric charts
        pass
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("config.json", config_json)
        zf.writestr("results.json", results_json)
        zf.writestr("metrics.csv", csv)
        zf.writestr("figures.html", figures.figures_html(figs, title=f"MixUnlearn run {run_id}"))
    return buf.getvalue()


st.title("Compare")
picked = widgets.require_run("on the Compare page")
if picked is not None:
    run_id, row, tensors = picked
    with widgets.guarded("the comparison"):
        results = row.results or {}
        cfg = results.get("config", row.config)
        info = results.get("info", {})
        level = info.get("level", "class")
        rows = jobs.comparison_rows(results)
        st.markdown(f"**{row.title}** — {info.get('n_forget', '?')} forgotten / {info.get('n_retain', '?')} retained "
                    f"training samples, scored on {info.get('n_test', '?')} {info.get('eval_split', 'test')} samples; "
                    f"device {info.get('device', '?')}.")
        for r in rows:
            if r["status"] == "failed":
                st.error(f"{r['display']} failed and has no metrics: {r['error']} Change its hyper-parameters on "
                         f"the Unlearn page and run again.")
        level_paper = paper.setting_level(cfg.get("dataset", ""), cfg.get("forget", ""))
        paper_rows = None
        if level_paper:
            paper_rows = {r["method"]: pr for r in rows
                          if (pr := paper.paper_row_for(cfg["dataset"], cfg["forget"], r["method"])) is not None}
        df = table(rows, level, paper_rows)
        primary, secondary = metric_columns(level)
        colcfg = {TITLES[m]: st.column_config.NumberColumn(TITLES[m], help=METRIC_HELP[m], format="%.2f")
                  for m in ALL_METRICS if TITLES[m] in df.columns}
        colcfg["gap to Retrain"] = st.column_config.NumberColumn(
            "gap to Retrain", format="%.2f",
            help=f"mean |metric − Retrain| over {', '.join(TITLES[m] for m in primary)} (derived; lower is better)")
        colcfg["time (s)"] = st.column_config.NumberColumn("time (s)", format="%.2f",
                                                           help="wall-clock seconds of the unlearning call; "
                                                                "Retrain: its training time")
        st.subheader("Metrics")
        st.caption(f"Protocol B ({'class' if level == 'class' else 'data'}-level: "
                   f"{', '.join(TITLES[m] for m in primary)}) first, then Protocol A "
                   f"({', '.join(TITLES[m] for m in secondary)}). Values in %. Closer to Retrain is better for "
                   f"every metric.")
        st.dataframe(df, column_config=colcfg, hide_index=True, key="metrics_table")
        if level_paper:
            st.caption("Rows marked 'reported in the paper' are the numbers printed in Peng, Tang & Yang (ICLR 2025, "
                       f"Table {'1' if level_paper == 'class' else '2'}; mean of 5 seeds, their 224px/LAF recipe), "
                       "shown for context beside ours, not as targets. Their gap to Retrain is derived.")
        else:
            st.caption("The paper reports no numbers for this dataset and setting (it reports CIFAR-10, SVHN, MNIST "
                       "and Fashion-MNIST with class:0 or data:5-9:0.4), so no reported rows are shown.")
        ours = [r for r in rows if r["status"] == "done"]
        c1, c2 = st.columns(2)
        with c1:
            st.plotly_chart(figures.metrics_bar(ours, primary, titles=TITLES, title="Protocol B metrics"),
                            key="metrics_bar")
        with c2:
            st.plotly_chart(figures.gap_bar([r for r in ours if r["method"] != "original"],
                                            title="gap to Retrain and run time"), key="gap_bar")
        where_they_differ(run_id, results, tensors)
        st.subheader("Download")
        store = state.store()

        def stored_or(name: str, make) -> str:
            try:
                return store.read_file(run_id, name).decode()
            except StoreError:  # runs stored from the command line (or an old store) keep only results.json
                return make()

        parts = (run_id, stored_or("results.json", lambda: json.dumps(results)),
                 stored_or("config.json", lambda: json.dumps(cfg, indent=2, default=str)),
                 stored_or("metrics.csv", lambda: jobs.comparison_csv(results)), level)
        # Both downloads are built when pressed (a callable), so opening the page never waits for them.
        st.download_button("Download the run (config, metrics CSV, figures as HTML)", lambda: download_zip(*parts),
                           file_name=f"mixunlearn-{run_id}.zip", mime="application/zip", key="download_run")
        results_json = json.dumps(results)
        st.download_button("Download the report (one HTML file that opens offline)",
                           lambda: report_html(run_id, results_json), file_name=f"mixunlearn-{run_id}-report.html",
                           mime="text/html", key="download_report")
