"""Starting background jobs from a page (validation first, so a bad input is an error message
at once, not a failed job later)."""

from __future__ import annotations

import dataclasses
import errno
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import streamlit as st

from mixunlearn import jobs

from . import state

if TYPE_CHECKING:  # imported on use: the experiment module loads torch
    from mixunlearn.experiment import ExperimentConfig


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def data_folder_problem(text: str | os.PathLike | None) -> str | None:
    """Why a data folder typed on the Setup page cannot be searched, as a message; None when it
    can or is empty. A folder that does not exist is no problem here: the data set is then
    simply not found there (and the page says so)."""
    text = str(text or "").strip()
    if not text:
        return None
    shown = _short(text)
    from mixunlearn.datasets import dataset_names, is_available

    try:
        for name in dataset_names():  # the very look-ups the pages make
            is_available(name, text)
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        if exc.errno == errno.ENAMETOOLONG:
            parts = Path(text).expanduser().parts
            longest = max((len(os.fsencode(p)) for p in parts), default=0)
            try:
                name_max = os.pathconf("/", "PC_NAME_MAX")
            except (OSError, ValueError):
                name_max = 255
            if longest > name_max:
                why = (f"one folder name in it is {longest} characters long, and this system allows at "
                       f"most {name_max}")
            else:
                why = f"the path is {len(os.fsencode(text))} characters long, too long for this system"
        return f"The data folder '{shown}' cannot be used: {why}."
    except ValueError as exc:  # e.g. a NUL character
        return f"The data folder '{shown}' cannot be used: {exc}."
    return None


OWN_DATA_HELP = ("A folder laid out as CLASS/images (20% of each class held out as test) or train/CLASS and "
                 "test/CLASS; every image is resized to 28x28. Or a .npz file with x_train, y_train, x_test, "
                 "y_test. See docs/plugins.md.")


def own_dataset(path: str) -> tuple[str, str | None]:
    """The dataset name of a typed folder or .npz path, and the reason it cannot be used (or None)."""
    from mixunlearn.userdata import check_path

    with st.spinner("Reading the images…"):
        return check_path(path)


def plugins_panel() -> None:
    """The plugin files of $MIXUNLEARN_HOME/plugins/ (loaded by app.py), each with its methods or error."""
    from mixunlearn.plugins import load_home_plugins, plugins_dir

    infos = load_home_plugins()
    st.subheader("Plugins")
    st.caption(f"Your own methods: every *.py file in `{plugins_dir()}` is imported when the app starts "
               "(restart it after a change). Plugin code runs with your rights; see docs/plugins.md.")
    if not infos:
        st.markdown("No plugin files.")
    for info in infos:
        name = Path(info.source).name
        if info.ok:
            st.markdown(f"- `{name}`: " + (", ".join(f"**{m}**" for m in info.methods) or "no method registered"))
        else:
            st.error(f"`{name}`: {info.error}")


def experiment_running() -> bool:
    job = state.job(state.K_EXPERIMENT_JOB)
    return job is not None and job.view(with_history=False).active


def start_experiment(cfg: ExperimentConfig, label: str, estimate_s: float | None = None) -> jobs.Job | None:
    """Validate ``cfg`` and submit it as this session's experiment job; on a bad input show an
    error and return None."""
    from mixunlearn.datasets import get_info, is_available

    if experiment_running():
        st.warning("A run of this session is still in progress; wait for it or cancel it first.")
        return None
    folder_problem = data_folder_problem(cfg.data_root)
    if folder_problem:
        st.error(f"{folder_problem} Correct it under 'Data folder' on the Setup page; nothing was started.")
        return None
    try:
        if not cfg.plugins:  # plugin methods: their files travel with the config (replay, store)
            from mixunlearn.plugins import plugin_paths_of

            cfg = dataclasses.replace(cfg, plugins=plugin_paths_of(cfg.methods))
        resolved = cfg.resolved()
        store = state.store()
        if not is_available(resolved.dataset, resolved.data_root):
            info = get_info(resolved.dataset)
            st.error(f"The files of {info.title} are not on this machine, so nothing was started. Put "
                     f"{info.files_hint}, or pick another dataset on the Setup page (digits always works offline).")
            return None
    except Exception as exc:  # noqa: BLE001 - every bad input becomes a message
        st.error(jobs.describe_error(exc))
        return None
    # The same run (same resolved config) already running, from another tab or session: join it
    # rather than computing it twice.
    job, new = state.runner().submit_once(jobs.experiment_key(resolved), jobs.experiment_job(resolved, store=store,
                                                                                            label=label),
                                          label=label, kind="experiment", device=resolved.device,
                                          meta={"config": resolved.to_dict(),
                                                **({"estimate_s": estimate_s} if estimate_s else {})})
    state.remember_job(state.K_EXPERIMENT_JOB, job)
    if not new:
        state.notice(state.K_EXPERIMENT_JOB, f"The same run is already in progress ('{job.label}', started from "
                     "another tab or session), so no second one was started; its progress is shown here.")
    state.warm_up_projections()
    return job


def select_finished_run(job: jobs.Job) -> None:
    """on_done hook: show the run an experiment job produced on every analysis page."""
    result: Any = job.result
    if isinstance(result, dict) and result.get("run_id"):
        st.session_state[state.K_RUN] = result["run_id"]


def start_models(cfg: ExperimentConfig, estimate_s: float | None = None) -> jobs.Job | None:
    folder_problem = data_folder_problem(cfg.data_root)
    if folder_problem:
        st.error(f"{folder_problem} Correct it under 'Data folder'; nothing was started.")
        return None
    try:
        resolved = cfg.resolved()
    except Exception as exc:  # noqa: BLE001
        st.error(jobs.describe_error(exc))
        return None
    job = state.runner().submit(jobs.models_job(resolved), label="Original and Retrain", kind="models",
                                device=resolved.device, meta={"estimate_s": estimate_s} if estimate_s else None)
    state.remember_job(state.K_MODELS_JOB, job)
    return job


def start_toy(cfg) -> jobs.Job | None:
    try:
        cfg.validate()
    except ValueError as exc:
        st.error(jobs.describe_error(exc))
        return None
    job = state.runner().submit(jobs.toy_job(cfg), label="Toy unlearning", kind="toy", gpu=False)
    state.remember_job(state.K_TOY_JOB, job)
    return job


def projection_job_key(run_id: str, method: str) -> str:
    return f"projection:{run_id}:{method}"


def start_projection(run_id: str, method: str, features: dict, seed: int) -> jobs.Job:
    """Project a stored run's features with ``method`` and cache the layout as an artifact."""
    from mixunlearn import analysis

    store = state.store()

    def run(job: jobs.Job) -> str:
        job.say(f"projecting with {analysis.PROJECTION_TITLES[method]}")
        layouts = analysis.project(features, method, reference="original", seed=seed)
        store.save_artifact(run_id, f"proj-{method}", analysis.projections_to_tensors(layouts))
        return run_id

    job = state.runner().submit(run, label=f"{analysis.PROJECTION_TITLES[method]} projection", kind="projection",
                                gpu=False)
    st.session_state[projection_job_key(run_id, method)] = job.id
    return job


def estimate(cfg: ExperimentConfig, *, projections: int = 0, only: tuple[str, ...] | None = None,
             sizes: tuple[int, int, int] | None = None):
    """The library's duration estimate of ``cfg`` on its device (probes reused for a minute), or
    None when it cannot be made (the reason is shown as a caption; starting still validates)."""
    from mixunlearn.estimate import Estimate, estimate_experiment

    try:
        if sizes is None:
            sizes = _split_sizes(cfg.dataset, cfg.data_root or "", cfg.forget, int(cfg.seed), cfg.eval_split)
        est = estimate_experiment(cfg, projections=projections, sizes=sizes, reuse_seconds=60.0)
    except Exception as exc:  # noqa: BLE001 - an estimate is advice; the run's own checks speak later
        st.caption(f"No time estimate: {jobs.describe_error(exc)}")
        return None
    if only is not None:
        est = Estimate([p for p in est.phases if p.name in only], est.device)
    return est


@st.cache_data(show_spinner=False, max_entries=16)
def _split_sizes(dataset: str, data_root: str, forget: str, seed: int, eval_split: str) -> tuple[int, int, int]:
    """(n_train, n_forget, n_test) of a task's split, computed once per task (the estimate needs them)."""
    from mixunlearn.data import make_split
    from mixunlearn.datasets import load_dataset

    data = make_split(load_dataset(dataset, data_root or None, download=False), forget, seed, eval_split=eval_split)
    return len(data.x_train), len(data.forget_idx), len(data.x_test)


def estimate_caption(est, what: str) -> None:
    """One line under a start button: the estimate of ``what`` and where the time goes."""
    if est is None:
        return
    if all(p.cached for p in est.phases):
        st.caption(f"{what}: already cached here — a few seconds.")
        return
    st.caption(f"Estimated {what}: {est.text()} (from a short timed probe on this device and measured "
               "method costs; the machine's current load counts).")
