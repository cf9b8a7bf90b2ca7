"""Setup: dataset, model, what to forget, seed, device; train or load the original and Retrain."""

from __future__ import annotations

from ui.shell import take_over_navigation

take_over_navigation()  # first: app.py's navigation runs before any page (ui/shell.py)

import streamlit as st
import torch

from mixunlearn import figures, jobs
from mixunlearn.data import parse_forget_spec
from mixunlearn.datasets import CorruptDataError, dataset_names, get_info, is_available, load_dataset
from mixunlearn.experiment import ExperimentConfig
from mixunlearn.models import MODELS
from mixunlearn.training import RECIPES, default_recipe, recipe_label, recipes_for
from mixunlearn.userdata import is_user_dataset
from ui import actions, state, widgets
from ui.progress import show_job

OWN_DATA = "__own__"
OWN_DATA_LABEL = "Image folder or .npz file (your own data)"


@st.cache_resource(show_spinner="Loading the dataset…", max_entries=2)
def _dataset(name: str, data_root: str):
    return load_dataset(name, data_root or None, download=False)


@st.cache_resource(show_spinner=False, max_entries=4)
def _split(name: str, data_root: str, spec: str, seed: int):
    from mixunlearn.data import make_split

    return make_split(_dataset(name, data_root), spec, seed)


def _share(value) -> float:
    """A remembered forget share as a slider value in [0.05, 0.95] (0.4 when there is none)."""
    try:
        share = float(value)
    except (TypeError, ValueError):
        return 0.4
    return min(0.95, max(0.05, share)) if share == share else 0.4


def _devices() -> list[str]:
    out = ["auto", "cpu"]
    if torch.cuda.is_available():
        out += [f"cuda:{i}" if i else "cuda" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        out.append("mps")
    return out


st.title("Setup")
st.caption("Choose the task. The original model and Retrain are trained once per (dataset, model, seed, "
           "forget set) and cached; every later run reuses them.")
s = state.setup()

with widgets.guarded("the setup"):
    # The data folder widget sits below the dataset choice, but availability depends on it. A folder
    # that cannot even be searched (e.g. a name too long) is reported next to the field, which stays
    # editable; meanwhile the default places are searched and nothing can start.
    typed_root = str(st.session_state.get("setup_data_root", s.get("data_root", "")) or "").strip()
    folder_problem = actions.data_folder_problem(typed_root)
    data_root = "" if folder_problem else typed_root
    names = dataset_names() + [OWN_DATA]
    avail = {n: is_available(n, data_root or None) for n in names[:-1]}
    remembered_own = is_user_dataset(s["dataset"])
    choice = st.selectbox(
        "Dataset", names, index=names.index(OWN_DATA if remembered_own else s["dataset"])
        if remembered_own or s["dataset"] in names else 0,
        format_func=lambda n: OWN_DATA_LABEL if n == OWN_DATA else
        f"{get_info(n).title}" + ("" if avail[n] else " — files not found"),
        key="setup_dataset",
    )
    if choice == OWN_DATA:
        default_path = s["dataset"].split(":", 1)[1] if remembered_own else ""
        own_path = st.text_input("Folder of images (one folder per class) or .npz file", value=default_path,
                                 key="setup_own_path", help=actions.OWN_DATA_HELP).strip()
        dataset, problem = actions.own_dataset(own_path)
        if problem:
            st.error(problem)
            actions.plugins_panel()
            st.stop()
        avail[dataset] = True
    else:
        dataset = choice
    info = get_info(dataset)
    st.caption(info.description)
    with st.expander("Data folder", expanded=bool(typed_root)):
        st.text_input("Folder with dataset files (optional)", value=typed_root, key="setup_data_root",
                      help="Empty: the default places (listed in the message when a dataset is missing). "
                           "Digits needs none.")
        if folder_problem:
            st.error(f"{folder_problem} Correct it above, or clear it to use the default places; until then "
                     "the default places are searched and nothing can be trained.")
    ok = avail[dataset]
    if not ok:
        st.error(f"The files of {info.title} are not on this machine. Put {info.files_hint} — or enter the "
                 f"folder that holds them under 'Data folder'. Digits always works offline.")
    else:
        try:
            _dataset(dataset, data_root)  # cached: a damaged file is found here, once, before any button
        except CorruptDataError as exc:
            ok = False
            st.error(f"The files of {info.title} were found but cannot be read: {exc}. Replace the damaged file "
                     f"(or enter another folder under 'Data folder'); digits always works offline.")

    models = [m for m, e in MODELS.items() if e.input_size == info.size]
    model = st.selectbox("Model", models, index=models.index(info.default_model) if info.default_model in models
                         else 0, format_func=lambda m: f"{m} — {MODELS[m].summary}", key="setup_model")
    recipes = recipes_for(MODELS[model].builder.family) or [default_recipe(dataset).name]
    dataset_default = default_recipe(dataset).name
    if is_user_dataset(dataset) and dataset_default not in recipes:  # small folders: the small-data recipe
        recipes = [dataset_default] + recipes
    remembered = s.get("recipe") if s.get("recipe") in recipes else None
    recipe = st.selectbox(
        "Training recipe (original model and Retrain)", recipes,
        index=recipes.index(remembered or (dataset_default if dataset_default in recipes else recipes[0])),
        format_func=lambda r: recipe_label(r, dataset),
        help="The fast recipe reaches the paper recipe's accuracy in minutes; the paper's recipe is the one "
             "of the fidelity tables (docs/benchmarks.md) and takes far longer on a CPU.",
        key=f"setup_recipe_{MODELS[model].builder.family}")
    st.caption(RECIPES[recipe].description)

    kinds = {"class": "a whole class", "data": "a share of some classes (data-level)",
             "noisy": "mislabelled samples (noisy labels)"}
    kind = st.radio("What to forget", list(kinds), index=list(kinds).index(s["kind"]), format_func=kinds.get,
                    horizontal=True, key="setup_kind")
    class_labels = [f"{c}: {n}" for c, n in enumerate(info.class_names)]
    # The class widgets are keyed on the dataset: a keyed widget keeps its identity when only its
    # labels change, and the browser would go on showing the previous dataset's class names.
    if kind == "class":
        current = s["classes"][0] if s["classes"] and s["classes"][0] < info.n_classes else 0
        picked = st.selectbox("Class to forget", list(range(info.n_classes)), index=current,
                              format_func=lambda c: class_labels[c], key=f"setup_class_{dataset}")
        # The share is kept for a later switch to data-level (a class spec ignores it).
        classes, fraction = [int(picked)], _share(s.get("fraction"))
    else:
        default = [c for c in s["classes"] if c < info.n_classes] or list(range(5, 10))
        classes = st.multiselect("Classes", list(range(info.n_classes)), default=default,
                                 format_func=lambda c: class_labels[c], key=f"setup_classes_{kind}_{dataset}")
        fraction = st.slider("Share of each class" + (" relabelled" if kind == "noisy" else " forgotten"),
                             0.05, 0.95, _share(s.get("fraction")), 0.05, key=f"setup_fraction_{kind}")
    c1, c2 = st.columns(2)
    with c1:
        seed = int(st.number_input("Seed", min_value=0, max_value=10_000, value=int(s["seed"]), step=1,
                                   key="setup_seed"))
    with c2:
        devices = _devices()
        device = st.selectbox("Device", devices, index=devices.index(s["device"]) if s["device"] in devices else 0,
                              help="auto: CUDA, then MPS, then CPU. GPU runs of all sessions queue for the GPU.",
                              key="setup_device")
    s.update({"recipe": recipe, "dataset": dataset, "model": model, "kind": kind,
              "classes": sorted(int(c) for c in classes),
              "fraction": float(fraction), "seed": seed, "device": device, "data_root": typed_root})
    spec_text = state.forget_spec_text(s)
    spec_error = None
    try:
        parse_forget_spec(spec_text, info.n_classes)
    except ValueError as exc:
        spec_error = str(exc)
        st.error(f"The forget set is not valid: {spec_error}")
    st.markdown(f"Forget specification: `{spec_text}` (the same text works on the command line: "
                f"`python -m mixunlearn run --dataset {dataset} --forget {spec_text} --seed {seed}`).")

    if ok:
        with widgets.guarded("the class samples"):
            ds = _dataset(dataset, data_root)
            g = torch.Generator().manual_seed(0)
            samples = {}
            for c in range(info.n_classes):
                idx = torch.nonzero(ds.y_train == c).flatten()
                samples[c] = ds.x_train[idx[torch.randperm(len(idx), generator=g)[:6]]]
            with st.expander("Sample images per class", expanded=kind == "class"):
                st.plotly_chart(figures.class_sample_grid(samples, info.class_names, highlight=classes),
                                key="class_samples")

    st.subheader("Original model and Retrain")
    cfg = ExperimentConfig(dataset=dataset, forget=spec_text, methods=("retrain",), seed=seed, model=model,
                           recipe=recipe, device=device, data_root=data_root or None, download=False)
    est = None
    if ok and spec_error is None and not folder_problem:
        split = _split(dataset, data_root, spec_text, seed)
        est = actions.estimate(cfg, only=("original", "retrain"),
                               sizes=(len(split.x_train), len(split.forget_idx), len(split.x_test)))
    models_job = state.job(state.K_MODELS_JOB)
    busy = models_job is not None and models_job.view(with_history=False).active
    if st.button("Train or load the original model and Retrain", key="train_button", type="primary",
                 disabled=busy or not ok or spec_error is not None or bool(folder_problem),
                 help="Runs in the background; cached models load in a second."):
        if actions.start_models(cfg, estimate_s=est.seconds if est else None) is not None:
            st.rerun()
    actions.estimate_caption(est, "training of the original model and Retrain")
    job = show_job(state.K_MODELS_JOB, curves=False)
    if job is not None and job.view(with_history=False).state == jobs.DONE and isinstance(job.result, dict):
        r = job.result
        for kind_name in ("original", "retrain"):
            m = r[kind_name]
            st.markdown(f"- **{kind_name}**: test accuracy {m['test_acc']:.2f}% · "
                        f"{'loaded from the cache' if m['cached'] else 'trained'} "
                        f"({m['seconds']:.1f} s of training)")
        widgets.link("unlearn", "Next: choose methods on the Unlearn page")

    if ok and spec_error is None:
        with widgets.guarded("the forget set"):
            split = _split(dataset, data_root, spec_text, seed)
            n_f, n_r = len(split.forget_idx), len(split.retain_idx)
            st.subheader(f"The forget set D_f ({n_f} samples; D_r has {n_r})")
            show = split.forget_idx[:24]
            caps = [f"label {int(split.y_train[i])}" + (f" (true {int(split.y_clean[i])})" if kind == "noisy" else "")
                    for i in show]
            st.plotly_chart(figures.image_grid(split.x_train[show], caps, max_cols=12), key="forget_grid")

with widgets.guarded("the plugins"):
    actions.plugins_panel()
