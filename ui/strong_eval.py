"""The Strong evaluation page's Streamlit helpers: the settings form, the time estimate, starting
(and finding again) the evaluation job, and the results. The work is in
:mod:`mixunlearn.strong_eval` (pools, scores, the estimate, the job) and the figures in
:mod:`mixunlearn.figures`; this module lays them out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st

from mixunlearn import figures, jobs
from mixunlearn import strong_eval as se
from mixunlearn.datasets import get_info, is_available
from mixunlearn.methods import list_methods

from . import state
from .actions import data_folder_problem

K_JOB = "strong_eval_job"
K_ESTIMATES = "strong_eval_estimates"
EVAL_PARAM = "eval"  # the URL query parameter holding the evaluation job's token (a reloaded tab finds it)
DEFAULT_METHODS = ("retrain", "finetune", "mixunlearn")
METRICS_MD = Path(__file__).resolve().parents[1] / "docs" / "metrics.md"
DEFINITIONS = {"score": "Score, ε and forget quality", "ulira": "U-LiRA", "relearn": "Relearn time",
               "probe": "Linear probe", "pools": "Pools"}


# --------------------------------------------------------------------------- the job


def job() -> jobs.Job | None:
    """This session's evaluation job; a session without one takes the job the URL's token names."""
    if not st.session_state.get(K_JOB):
        found = state.runner().find_token(st.query_params.get(EVAL_PARAM))
        if found is not None and found.kind == "strong-eval":
            st.session_state[K_JOB] = found.id
    found = state.job(K_JOB)
    if found is not None and st.query_params.get(EVAL_PARAM) != found.token:
        st.query_params[EVAL_PARAM] = found.token  # navigation drops it; a reload needs it
    elif found is None and EVAL_PARAM in st.query_params:
        del st.query_params[EVAL_PARAM]  # a token from before a restart
    return found


def running() -> bool:
    j = job()
    return j is not None and j.view(with_history=False).active


def method_choices(kind: str) -> tuple[list[str], dict[str, str]]:
    """Method names usable for the forget kind (``retrain`` first: Retrain with other seeds) and
    display names."""
    specs = [m for m in list_methods() if kind in m.kinds and m.name != "retrain"]
    display = {"retrain": "Retrain, other seeds (the sanity row)", **{m.name: m.display for m in specs}}
    return ["retrain"] + [m.name for m in specs], display


def config(setup: dict[str, Any], methods: list[str], pool: int, epochs: int, depth: int, cap: int
           ) -> se.StrongEvalConfig:
    """The evaluation of the session's task (Setup page) with the page's settings (not yet checked)."""
    return se.StrongEvalConfig(dataset=setup["dataset"], forget=state.forget_spec_text(setup), methods=tuple(methods),
                               pool=pool, seed=setup["seed"], model=setup.get("model") or None,
                               epochs=epochs or None, device=setup["device"],
                               data_root=setup.get("data_root") or None, download=False, depth_models=depth,
                               relearn_cap=cap)


def problem(cfg: se.StrongEvalConfig) -> str | None:
    """Why ``cfg`` cannot run, as a message; None when it can."""
    folder = data_folder_problem(cfg.data_root)
    if folder:
        return f"{folder} Correct it under 'Data folder' on the Setup page."
    if not cfg.methods:
        return "Pick at least one method to evaluate."
    try:
        resolved = cfg.resolved()
        if not is_available(resolved.dataset, resolved.data_root):
            info = get_info(resolved.dataset)
            return (f"The files of {info.title} are not on this machine. Put {info.files_hint}, or pick another "
                    f"dataset on the Setup page (digits always works offline).")
    except Exception as exc:  # noqa: BLE001 - every bad input becomes a message
        return jobs.describe_error(exc)
    return None


def estimate(cfg: se.StrongEvalConfig) -> tuple[se.EvalEstimate | None, str | None]:
    """(the time estimate, None) or (None, why not). Times a few steps on this machine the first
    time a task is seen (the library keeps the rates for the process); while an evaluation runs
    the last estimate is shown rather than timing anything next to it."""
    key = se.evaluation_key(cfg)
    held = st.session_state.setdefault(K_ESTIMATES, {})
    if running():
        return held.get(key), None if key in held else "An evaluation is running; the estimate waits for it."
    try:
        with st.spinner("Timing a few training and unlearning steps on this machine…"):
            est = se.estimate_evaluation(cfg)
    except Exception as exc:  # noqa: BLE001 - a message, never a traceback
        return None, jobs.describe_error(exc)
    held[key] = est
    return est, None


def start(cfg: se.StrongEvalConfig, est: se.EvalEstimate | None) -> jobs.Job | None:
    """Check ``cfg`` and submit the evaluation (joining the same evaluation when one runs already);
    None after an error message."""
    if running():
        st.warning("An evaluation of this session is still running; wait for it or cancel it first.")
        return None
    why = problem(cfg)
    if why:
        st.error(f"Nothing was started. {why}")
        return None
    resolved = cfg.resolved()
    new_job, new = state.runner().submit_once(
        se.evaluation_key(resolved), se.evaluation_job(resolved, estimate=est),
        label=f"Strong evaluation (N = {resolved.pool})", kind="strong-eval", device=resolved.device,
        meta={"config": resolved.to_dict()})
    st.session_state[K_JOB] = new_job.id
    st.query_params[EVAL_PARAM] = new_job.token
    if not new:
        state.notice(K_JOB, f"The same evaluation is already running ('{new_job.label}', started from another tab or "
                     "session), so no second one was started; its progress is shown here.")
    return new_job


def progress_titles() -> dict[str, str]:
    titles = {"overall": "all pools", "training": "retrained models in training", "original": "original model",
              "reference pool": "reference pool (Retrain)", "Retrain (as unlearner) pool": "Retrain, other seeds",
              "evaluate": "data"}
    for m in list_methods():
        titles[m.name] = f"{m.display}: current run"
        titles[f"{m.name} pool"] = f"{m.display} pool"
    return titles


# --------------------------------------------------------------------------- definitions


@st.cache_data(show_spinner=False)
def _definitions(mtime: float) -> dict[str, str]:
    return se.markdown_sections(METRICS_MD.read_text(encoding="utf-8"), se.METRIC_SECTIONS)


def definitions() -> dict[str, str]:
    """The page's metric definitions: the sections of docs/metrics.md (empty when it is missing)."""
    try:
        return _definitions(METRICS_MD.stat().st_mtime)
    except OSError:
        return {}


def definition_buttons(key: str) -> None:
    """One popover per metric with its exact definition from docs/metrics.md."""
    defs = definitions()
    cols = st.columns(len(DEFINITIONS))
    for col, (name, label) in zip(cols, DEFINITIONS.items()):
        with col.popover(label, icon=":material/menu_book:", width="stretch", key=f"se_def_{key}_{name}"):
            st.markdown(defs.get(name) or f"The definition is in docs/metrics.md, which is missing here ({label}).")


# --------------------------------------------------------------------------- results


def _column_help() -> dict[str, Any]:
    return {name: st.column_config.NumberColumn(name, help=text, format="%.3f" if name in (
        "score", "forget quality") else "%.2f") for name, text in se.METRIC_HELP.items()}


def results(result: dict[str, Any]) -> None:
    """The finished evaluation: scores, ε histogram, least-forgotten examples, relearn and probe."""
    doc, display = result["doc"], result.get("display", {})
    cfg, info = doc["config"], doc["info"]
    n = cfg["pool"]
    done = {m: r for m, r in doc["methods"].items() if r.get("status") == "done"}
    titles = {m: ("Retrain (other seeds)" if m == "retrain" else display.get(m, m)) for m in doc["methods"]}
    st.subheader("Scores")
    st.caption(f"{get_info(cfg['dataset']).title}, forget `{cfg['forget']}`, seed {cfg['seed']}, pools of N = {n} "
               f"models, {info['n_forget']} forget examples; {info['seconds_total']:.0f} s in all "
               f"({doc['reference']['cached_models']} of the {n} reference models came from the cache).")
    st.dataframe(se.score_rows(doc, display), hide_index=True, column_config=_column_help(), key="se_scores")
    for name, rec in doc["methods"].items():
        if rec.get("status") == "failed":
            st.error(f"{titles[name]} failed: {rec.get('error', '')}")
    st.caption("Exact definitions, one click away (from docs/metrics.md):")
    definition_buttons("scores")
    if not done:
        return
    st.subheader("ε over the forget examples")
    st.plotly_chart(figures.epsilon_histogram({m: done[m]["eps_per_example"] for m in done}, n, titles=titles),
                    key="se_eps_hist")
    st.caption("ε per forget example: how well the best threshold test on that example's confidence tells the "
               "method's N models from the N retrained ones (0: not at all; 50: the cap, perfectly). Each example "
               "scores 1, ½, ¼, … by its ε bucket; the forget quality is their mean.")
    examples(result, done, titles)
    st.subheader("Relearn time and linear probe")
    st.dataframe(se.depth_rows(doc, display), hide_index=True, key="se_depth",
                 column_config={"relearn steps": st.column_config.NumberColumn(help=se.METRIC_HELP["relearn steps"]),
                                "probe acc on forget (%)": st.column_config.NumberColumn(
                                    help=se.METRIC_HELP["probe acc on forget (%)"])})
    st.caption(f"Means over the first {cfg['depth_models']} models of each pool; relearn capped at "
               f"{cfg['relearn_cap']} steps (target: the original's accuracy on D_f, "
               f"{doc['original']['forget_acc']:.1f} %, minus 5 points).")
    slim = {k: v for k, v in doc.items() if k != "confidences"}
    st.download_button("Download evaluation.json", json.dumps(slim, indent=1), file_name="evaluation.json",
                       mime="application/json", key="se_download")


def examples(result: dict[str, Any], done: dict[str, Any], titles: dict[str, str]) -> None:
    """The least-forgotten examples of one method as images; one chosen example's confidences."""
    doc, ex = result["doc"], result["examples"]
    st.subheader("Least-forgotten examples")
    methods = list(done)
    method = st.selectbox("Method", methods, index=len(methods) - 1, format_func=titles.get, key="se_method")
    order = ex["least_forgotten"].get(method, [])
    if not order:
        st.info("No forget example to show.")
        return
    row_of = {p: i for i, p in enumerate(ex["positions"])}
    eps = done[method]["eps_per_example"]
    names = result.get("class_names") or []
    images = np.asarray(ex["images"])[[row_of[p] for p in order]]
    labels = [ex["labels"][row_of[p]] if ex["labels"] else None for p in order]

    def label_name(y) -> str:
        return names[y] if y is not None and 0 <= y < len(names) else str(y)

    caps = [f"#{r + 1} ε={eps[p]:.1f}" for r, p in enumerate(order)]
    st.plotly_chart(figures.image_grid(images, caps, max_cols=12, tile=70), key="se_examples")
    pick = st.selectbox("Example", list(range(len(order))), key=f"se_example:{method}",
                        format_func=lambda r: f"#{r + 1}: D_f example {order[r]} (train index "
                                              f"{ex['train_index'][row_of[order[r]]]}, label "
                                              f"{label_name(labels[r])}), ε = {eps[order[r]]:.2f}")
    j = order[pick]
    confs = doc.get("confidences") or {}
    if method not in confs or "reference" not in confs:
        st.info("This evaluation kept no per-model confidences.")
        return
    r = np.asarray(confs["reference"])[:, j]
    u = np.asarray(confs[method])[:, j]
    st.plotly_chart(figures.confidence_distributions({"retrained (reference pool)": r, f"{titles[method]}": u},
                                                     title=f"D_f example {j}: confidence under each model"),
                    key="se_conf")
    st.caption(f"Median confidence: retrained {np.median(r):.2f}, {titles[method]} {np.median(u):.2f}; ranges "
               f"{np.ptp(r):.2f} and {np.ptp(u):.2f}. The examples are ordered by ε (largest first), ties by the "
               "distance between the two medians.")
