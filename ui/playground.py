"""The generator playground panel (issue 16): MixUnlearn's generator settings as widgets, a Run
button that runs MixUnlearn alone on the shown run's task in the background (live progress,
cancel), and the result beside the run's own -- masks and mixes for the same probe pairs at the
same λ, health curves, Test_r / Test_f / ASR and the gap to Retrain. The last few results stay in
the session to step back and forth; one can be saved as a run. The work is in
:mod:`mixunlearn.playground`; this module lays it out."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

import streamlit as st

from mixunlearn import analysis, figures
from mixunlearn import playground as pg
from mixunlearn.datasets import get_info
from mixunlearn.estimate import format_seconds
from mixunlearn.experiment import ExperimentConfig
from mixunlearn.jobs import describe_error
from mixunlearn.methods import field_specs, get_method
from mixunlearn.progress import ProgressEvent

from . import state
from .progress import show_job

K_JOB = state.K_PLAYGROUND_JOB  # its token goes into the URL (?pg=): a reloaded tab finds the run again
K_ATTACK_JOB = "playground_attack_job"
K_RESULTS = "playground_results"
K_COUNTER = "playground_counter"
K_MISSING = "playground_missing"
K_NEWEST = "playground_show_newest"
MAX_RESULTS = 6

# What each setting does to the mask, from measurements on digits (docs/mixunlearn.md, rounds r1-r3 over
# classes x seeds; "demo" = the default demo's task, class 3 seed 0, this panel's own runs).
CAPTIONS = {
    "share_constraint": "project: the mask's mean share is λ exactly (share error 0.000). none: the mask drifts "
                        "to the forget image, away from λ (share error 0.17–0.25 in the tuning rounds, 0.45 on "
                        "the demo).",
    "lr_generator": "Adam moves a weight by about lr per update: at 1e-3 the mask stays flat (std 0.012–0.018); "
                    "3e-2, the digits default, gives std ≈ 0.07.",
    "gen_optimizer": "SGD (momentum 0.9) barely moves the mask at these budgets (std 0.016).",
    "gen_steps": "More generator updates per round: more spatial structure (std 0.07–0.10 vs 0.03–0.07), but a "
                 "mostly worse data-level gap on digits.",
    "gen_warmup": "Updates against f_D before unlearning: the most structure (std 0.11–0.12) but over-forgets at "
                  "data level (|ΔTrain_f| 5.6 vs 3.0).",
    "gen_interval": "K: a generator round every K unlearner steps. K = 1: std 0.09–0.12 vs 0.03 at K = 4, but "
                    "over-forgets at data level on digits.",
    "tau_gen": "Temperature of the generator's loss (denominator only); τ_gen 1 or 5 did no better than 20.",
    "tau_mix": "Temperature of the mix loss: small favours forgetting; 50 did no better than 20.",
    "tau_real": "τ_real = 1 wipes out the forgotten classes at data level (Train_f → 0, Retrain 98); 20 stops "
                "forgetting at Retrain's level.",
    "omega": "Weight of L_real against L_mix; ω = 2 gave a worse gap on digits (2.29 vs 1.47).",
    "alpha": "λ ~ Beta(α, α): α = 2 keeps both images in every mix; α 0.75 draws λ near 0 or 1, mixes close "
             "to one plain image.",
    "gen_init": "normal N(0, 0.01²): flat attention, a flat mask (std 0.003); kaiming gives structure from the "
                "first update.",
}


# --------------------------------------------------------------------------- settings


def _base_type(t: Any) -> Any:
    return type(typing.get_args(t)[0]) if typing.get_origin(t) is typing.Literal else t


def _range_text(f: dict) -> str:
    if f["choices"]:
        return "choices: " + ", ".join(str(c) for c in f["choices"])
    if f["min"] is not None and f["max"] is not None:
        return f"allowed {f['min']:g} … {f['max']:g}"
    return "no range"


def _settings(method: str, own: dict[str, Any], key: str) -> dict[str, Any]:
    """The generator widgets, prefilled with the run's own values. Numbers are not clamped by the
    widget: an out-of-range value gets the library's message when Run is pressed."""
    specs = {f["name"]: f for f in field_specs(get_method(method).config_cls)}
    values: dict[str, Any] = {}
    cols = st.columns(3)
    for i, name in enumerate(pg.GENERATOR_FIELDS):
        f, box = specs[name], cols[i % 3]
        default, t = own[name], _base_type(specs[name]["type"])
        help_text = f"{f['help']} ({_range_text(f)})"
        wkey = f"{key}:{name}"
        with box:
            if f["choices"]:
                opts = list(f["choices"])
                values[name] = st.selectbox(name, opts, index=opts.index(default) if default in opts else 0,
                                            help=help_text, key=wkey)
            elif t is int:
                values[name] = int(st.number_input(name, value=int(default), step=1, help=help_text, key=wkey))
            else:
                fmt = "%.4g"
                step = abs(float(default)) / 10 if default else 0.01
                values[name] = float(st.number_input(name, value=float(default), step=step, format=fmt,
                                                     help=help_text, key=wkey))
            st.caption(CAPTIONS.get(name, ""))
    return values


# --------------------------------------------------------------------------- jobs


def _run_fn(cfg: ExperimentConfig, overrides: dict, method: str, base: dict | None, train_missing: bool):
    def run(job):
        job.callback(ProgressEvent("playground", "start", 0, 1, message="starting"))
        try:
            return {"result": pg.run_playground(cfg, overrides, method=method, base=base, callbacks=[job.callback],
                                                train_missing=train_missing)}
        except pg.ModelsNotCached as exc:
            return {"missing": str(exc)}

    return run


def _on_done(job) -> None:
    out = job.result if isinstance(job.result, dict) else {}
    run_id = job.meta.get("run_id")
    if "missing" in out:
        st.session_state[K_MISSING] = {"run_id": run_id, "message": out["missing"]}
        st.rerun()  # the panel above the progress was drawn before this was known
    result = out.get("result")
    if result is None:
        return
    st.session_state.pop(K_MISSING, None)
    n = st.session_state.get(K_COUNTER, 0) + 1
    st.session_state[K_COUNTER] = n
    label = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.overrides.items())
    entries = st.session_state.setdefault(K_RESULTS, [])
    entries.append({"n": n, "run_id": run_id, "label": label or "the run's own settings", "result": result})
    del entries[:-MAX_RESULTS]
    st.session_state[K_NEWEST] = True
    # The attack second: the accuracies are shown now, ASR when this small job is done.
    device = result.context.config.device if result.context is not None else None  # the GPU queue, when on one
    attack = state.runner().submit(lambda _job: pg.score_attack(result), label="Playground attack (ASR)",
                                   kind="playground-attack", device=device)
    state.remember_job(K_ATTACK_JOB, attack)
    st.rerun()  # draw the new result (the page may have been drawn after the job had already finished)


# --------------------------------------------------------------------------- results


def _metric_keys(level: str) -> tuple[str, ...]:
    return pg.accuracy_keys(level) + ("asr",)


_TITLES = {"test_r": "Test_r", "test_f": "Test_f", "train_r": "Train_r", "train_f": "Train_f", "test": "Test",
           "asr": "ASR"}


_SHORT_COLUMNS = dict(zip(figures.GEN_COLUMNS, ("x_f", "x_r", "mask", "mix", "λ-mix")))


def _side(title: str, side: dict, li: int, level: str, class_names, key: str) -> None:
    st.markdown(f"**{title}**")
    if side.get("snaps") is None:
        st.info(side.get("note") or "Nothing to show.")
        return
    metrics, cols = side["metrics"], st.columns(len(_metric_keys(level)) + 1)
    for col, k in zip(cols, _metric_keys(level)):
        v = metrics.get(k)
        col.metric(_TITLES[k], "…" if v is None else f"{v:.2f}",
                   help="scoring the attack…" if v is None and k == "asr" else None)
    if side.get("gap") is not None:
        cols[-1].metric("gap to Retrain", f"{side['gap']:.2f}")
    else:
        cols[-1].metric("gap (accuracies)", f"{side['gap_acc']:.2f}",
                        help="Over the accuracy metrics only; the full gap follows with the attack.")
    snaps = side["snaps"]
    if not snaps:
        st.info("No generator snapshots (the vanilla mixer or L_mix off).")
        return
    snap = snaps[-1]
    h = analysis.snapshot_health(snap)
    if h:
        st.caption(" · ".join(f"{figures.HEALTH_TITLES[k]} {v:+.3f}" if k.startswith("gain")
                              else f"{figures.HEALTH_TITLES[k]} {v:.3f}" for k, v in h.items()))
    grid = figures.generator_grid(snap, li, class_names=class_names, max_pairs=4)
    for a in grid.layout.annotations[:len(figures.GEN_COLUMNS)]:  # half-width: short column titles
        a.text = _SHORT_COLUMNS.get(a.text, a.text)
    st.plotly_chart(grid, key=f"{key}-grid")
    if h:
        st.plotly_chart(figures.generator_health_curves(snaps), key=f"{key}-health")


def _own_side(row, tensors, method: str, level: str) -> dict:
    rec = ((row.results or {}).get("methods") or {}).get(method)
    snaps = analysis.snapshots_from_tensors(tensors, method)
    if rec is None or not snaps:
        return {"snaps": None, "note": "This run has no MixUnlearn generator snapshots to compare with."}
    metrics = rec.get("metrics") or {}
    retrain = (((row.results or {}).get("methods") or {}).get("retrain") or {}).get("metrics") or {}
    try:
        gap_acc = pg.accuracy_gap(metrics, retrain, level)
    except (KeyError, TypeError, ValueError):
        gap_acc = float("nan")
    return {"snaps": snaps, "metrics": metrics, "gap": rec.get("gap_to_retrain"), "gap_acc": gap_acc}


def _result_side(result: pg.PlaygroundResult) -> dict:
    return {"snaps": result.snapshots, "metrics": result.metrics, "gap": result.gap, "gap_acc": result.gap_acc}


def _table(own: dict, entries: list[dict], level: str) -> list[dict]:
    rows = []
    for n, label, side, secs in [(0, "the run's own", own, None)] + [
            (e["n"], e["label"], _result_side(e["result"]), e["result"].seconds) for e in entries]:
        if side.get("snaps") is None:
            continue
        h = analysis.snapshot_health(side["snaps"][-1]) if side["snaps"] else {}
        rows.append({"#": n, "settings": label,
                     **{_TITLES[k]: side["metrics"].get(k) for k in _metric_keys(level)},
                     "gap to Retrain": side["gap"], "gap (accuracies)": side["gap_acc"],
                     **{figures.HEALTH_TITLES[k]: h.get(k) for k in ("share_err", "std_mid", "gain_retain")},
                     "MixUnlearn s": secs})
    return rows


# --------------------------------------------------------------------------- the panel


def playground_panel(run_id: str, row, tensors: dict) -> None:
    """The playground for the shown run (see the module docstring)."""
    st.divider()
    st.subheader("Playground: run MixUnlearn again with other generator settings")
    try:
        cfg = ExperimentConfig.from_dict(row.config)
        methods = analysis.snapshot_methods(tensors)
        chosen = st.session_state.get("generator_method")
        method = pg.playground_method(cfg, chosen if chosen in methods and chosen in pg.PLAYGROUND_METHODS else None)
        recorded = ((((row.results or {}).get("methods") or {}).get(method) or {}).get("config")) or None
        try:
            _, _, own_cfg = pg.check_overrides(cfg, {}, method=method, base=recorded)
            base = recorded
        except ValueError:  # a run stored by an older version: start from today's settings for its params
            _, _, own_cfg = pg.check_overrides(cfg, {}, method=method)
            base = None
    except Exception as exc:  # noqa: BLE001 - a run this version cannot replay is a message
        st.info(f"The playground cannot replay this run's task: {describe_error(exc)}")
        return
    info = get_info(cfg.dataset)
    st.caption(f"{get_method(method).display} alone on this run's task ({info.title}, forget `{cfg.forget}`, seed "
               f"{cfg.seed}), with the original model and Retrain from the model cache (never retrained). The "
               "widgets start at the settings this run used; change some and press Run. The probe pairs and λs are "
               "the run's own, so the masks compare one to one.")
    own = dataclasses.asdict(own_cfg)
    key = f"pg:{run_id}:{method}"
    values = _settings(method, own, key)
    overrides = {k: v for k, v in values.items() if v != own[k]}
    try:
        est = pg.estimate_seconds(cfg, overrides, method=method, base=base)
    except ValueError:
        est = None
    if est is not None and cfg.dataset != "digits":
        st.info(f"One run on {info.title} takes about {format_seconds(est)} of compute on this machine — a rough "
                "estimate from the data set's size and the budget (epochs, batch, K, generator steps), not a "
                "measurement; the first run also loads the data and the cached models.", icon=":material/timer:")
    elif est is not None:
        st.caption(f"About {format_seconds(max(est, 1.5))} per run on digits (measured ≈ 1.6 s on 2 CPU cores, "
                   "docs/app.md); the attack follows in about 0.2 s.")
    missing = st.session_state.get(K_MISSING)
    train_missing = False
    if missing and missing.get("run_id") == run_id:
        st.warning(missing["message"])
        train_missing = st.checkbox("Train the missing models first (this can take minutes)", key=f"{key}:train")
    job = state.job(K_JOB)
    running = job is not None and job.view(with_history=False).active
    if st.button("Run", key=f"{key}:run", type="primary", disabled=running,
                 help="MixUnlearn alone, in the background; the accuracies first, the attack after."):
        current = state.job(K_JOB)
        try:
            pg.check_overrides(cfg, overrides, method=method, base=base)
        except ValueError as exc:
            st.error(f"Nothing was started. {describe_error(exc)}")
        else:
            if current is not None and current.view(with_history=False).active:
                st.warning("A playground run is still in progress; wait for it or cancel it first.")
            else:
                # No st.rerun() here: a full redraw of the page's figures would compete with the run for the CPU.
                job = state.runner().submit(_run_fn(cfg, overrides, method, base, train_missing),
                                            label="Playground run", kind="playground", device=cfg.device,
                                            meta={"run_id": run_id})
                state.remember_job(K_JOB, job)
    titles = {method: get_method(method).display, "playground": "playground"}
    show_job(K_JOB, titles=titles, curves=False, on_done=_on_done)
    attack = state.job(K_ATTACK_JOB)
    if attack is not None and attack.view(with_history=False).active:
        show_job(K_ATTACK_JOB, curves=False, cancel=False)

    entries = [e for e in st.session_state.get(K_RESULTS, []) if e["run_id"] == run_id
               and e["result"].method == method]
    if not entries:
        st.caption("No playground result for this run yet.")
        return
    level = entries[-1]["result"].level
    own_side = _own_side(row, tensors, method, level)
    options = [0] + [e["n"] for e in entries]
    labels = {0: "the run's own", **{e["n"]: f"#{e['n']}: {e['label']}" for e in entries}}
    left_key, right_key = f"{key}:left", f"{key}:right"
    if st.session_state.pop(K_NEWEST, False) or st.session_state.get(right_key) not in options:
        st.session_state[right_key] = options[-1]
        st.session_state[left_key] = options[-2]
    if st.session_state.get(left_key) not in options:
        st.session_state[left_key] = 0
    c1, c2, c3 = st.columns([2, 2, 1])
    left = c1.selectbox("Left", options, format_func=labels.get, key=left_key)
    right = c2.selectbox("Right", options, format_func=labels.get, key=right_key)
    last = entries[-1]["result"].last_snapshot
    lams = [float(v) for v in last["lams"].tolist()] if last is not None else [0.5]
    li = c3.radio("λ", list(range(len(lams))), index=min(1, len(lams) - 1), format_func=lambda k: f"{lams[k]:g}",
                  horizontal=True, key=f"{key}:lambda")
    by_n = {e["n"]: e for e in entries}
    if job is not None and job.view(with_history=False).active:
        # Drawing the figures takes the CPU the run needs (seconds on 2 cores): the table only, meanwhile.
        st.dataframe(_table(own_side, entries, level), hide_index=True, key=f"{key}:table")
        st.caption("The masks and curves come back when the run has finished.")
        return
    class_names = ((row.results or {}).get("app") or {}).get("class_names") or None
    for col, pick, side_key in zip(st.columns(2), (left, right), ("left", "right")):
        with col:
            side = own_side if pick == 0 else _result_side(by_n[pick]["result"])
            _side(labels[pick], side, li, level, class_names, f"pg-{side_key}")
    st.dataframe(_table(own_side, entries, level), hide_index=True, key=f"{key}:table")
    st.caption("The last snapshot of each (generator update at the end of the run). The playground keeps the last "
               f"{MAX_RESULTS} results of this session.")
    if right != 0:
        result = by_n[right]["result"]
        if st.button(f"Save #{right} as a run", key=f"{key}:save",
                     help="Stores Retrain and this MixUnlearn (attack scored first) as a complete run in the run "
                          "store, so every page can show it."):
            try:
                with st.spinner("saving"):
                    new_id = pg.save_as_run(result, state.store(), label=f"playground #{right}: {by_n[right]['label']}")
            except Exception as exc:  # noqa: BLE001 - a message, never a traceback
                st.error(f"Not saved. {describe_error(exc)}")
            else:
                st.success(f"Saved as run {new_id}; pick it in the sidebar's run list.")
