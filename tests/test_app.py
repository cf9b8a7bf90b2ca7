"""The Streamlit app through streamlit.testing.v1.AppTest: every page before any run, a full
default run driven through the job runner, cancel mid-run, bad inputs, a synthetic generator
run, the Learn page's toy, and the figures the pages lay out."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest

from mixunlearn import analysis, figures, jobs
from mixunlearn.jobs import get_runner

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")
PAGES = ["pages/1_Setup.py", "pages/2_Unlearn.py", "pages/3_Compare.py", "pages/4_Embeddings.py",
         "pages/5_Loss_KDE.py", "pages/6_Generator.py", "pages/7_Learn.py"]
ANALYSIS_PAGES = PAGES[2:6]
TIMEOUT = 60


def _app() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    return at


def _open(at: AppTest, page: str) -> AppTest:
    at.switch_page(page)
    at.run()
    assert not at.exception, f"{page}: {[e.value for e in at.exception]}"
    return at


def _texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


def _charts(at: AppTest) -> list[dict]:
    """The Plotly figures on the page, as dicts."""
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def _z_shape(z) -> tuple[int, ...]:
    """The shape of a heatmap's z in a chart spec (a typed array {dtype, bdata, shape} or lists)."""
    if isinstance(z, dict):
        return tuple(int(n) for n in str(z["shape"]).split(","))
    return np.asarray(z).shape


def _wait(at: AppTest, key: str, timeout: float = 300) -> jobs.Job:
    job = get_runner().get(at.session_state[key])
    assert job is not None
    deadline = time.time() + timeout
    while not job.wait(1.0):
        assert time.time() < deadline, f"job {job.id} still {job.state}: {job.message}"
        at.run()  # the page polls while the job runs; no exception may appear meanwhile
        assert not at.exception, [e.value for e in at.exception]
    return job


@pytest.fixture
def shared_models(digits_class3, session_cache):
    """Point this test's model cache at the session's, where digits class:3 seed 0 is trained."""
    home = Path(os.environ["MIXUNLEARN_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    (home / "models").symlink_to(session_cache.root, target_is_directory=True)
    return session_cache


def test_every_page_before_any_run_shows_a_helpful_message():
    at = _app()
    assert not at.exception
    assert at.button(key="demo_button").label.startswith("Run the default demo")
    assert "No finished run yet" in _texts(at.info)
    for page in ANALYSIS_PAGES:
        _open(at, page)
        assert "No finished run yet" in _texts(at.info), page
        assert not at.error, page
    _open(at, "pages/1_Setup.py")
    assert at.selectbox(key="setup_dataset").value == "digits"
    assert not at.error
    _open(at, "pages/2_Unlearn.py")
    methods = at.multiselect(key="unlearn_methods")
    assert methods.value == ["mixunlearn"]  # MixUnlearn preselected
    assert "retrain" not in methods.options
    # Hyper-parameter widgets come from the config dataclass, defaults prefilled for the family.
    from mixunlearn.methods import field_specs, get_method, make_config

    cfg = make_config("mixunlearn", "digits")
    checked = set()
    for f in field_specs(get_method("mixunlearn").config_cls):
        matches = [w for w in at.get(_widget_kind(f)) if getattr(w, "key", "") == f"hp:mixunlearn:digits:{f['name']}"]
        assert matches, f["name"]
        default = getattr(cfg, f["name"])
        # A list field is a comma-separated text; every other widget holds the default itself (a field
        # with choices too: label_mode, reduction, mixer, upsample, fixed_net, ...).
        expected = ",".join(str(v) for v in default) if isinstance(default, (tuple, list)) else default
        assert matches[0].value == expected, (f["name"], matches[0].value, expected)
        checked.add(f["name"])
    assert {"label_mode", "reduction", "mixer", "upsample", "fixed_net"} <= checked


def _widget_kind(f) -> str:
    if f["choices"]:
        return "selectbox"
    t = f["type"]
    if t is bool:
        return "checkbox"
    if t in (int, float):
        return "number_input"
    return "text_input"


def test_methods_that_do_not_support_the_kind_are_disabled_with_a_reason():
    at = _app()
    _open(at, "pages/1_Setup.py")
    at.radio(key="setup_kind").set_value("data").run()
    assert not at.exception
    _open(at, "pages/2_Unlearn.py")
    from mixunlearn.methods import list_methods

    unsupported = [m for m in list_methods() if "data" not in m.kinds]
    options = at.multiselect(key="unlearn_methods").options
    for m in unsupported:
        assert m.name not in options and f"{m.display} ({m.name})" not in options
        assert m.display in _texts(at.caption)
    if not unsupported:
        pytest.skip("every registered method supports data-level forgetting")


@pytest.mark.parametrize("kind", ["class", "data"])
def test_every_registered_method_gets_a_hyper_parameter_form(kind):
    """Widgets come from each config dataclass: every method that lands appears with its form."""
    from mixunlearn.methods import field_specs, get_method, make_config

    at = _app()
    _open(at, "pages/1_Setup.py")
    at.radio(key="setup_kind").set_value(kind).run()
    _open(at, "pages/2_Unlearn.py")
    box = at.multiselect(key="unlearn_methods")
    names = [o.rsplit("(", 1)[1].rstrip(")") for o in box.options]
    assert "mixunlearn" in names and "finetune" in names
    box.set_value(names).run()
    assert not at.exception, [e.value for e in at.exception]
    widgets = {w.key: w for kind_ in ("number_input", "checkbox", "selectbox", "text_input") for w in at.get(kind_)}
    for name in names:
        cfg = make_config(name, "digits")
        for f in field_specs(get_method(name).config_cls):
            key = f"hp:{name}:digits:{f['name']}"
            assert key in widgets, (name, f["name"])
            # ...prefilled with the family's default (a list field as comma-separated text).
            default = getattr(cfg, f["name"])
            expected = ",".join(str(v) for v in default) if isinstance(default, (tuple, list)) else default
            assert widgets[key].value == expected, (name, f["name"], widgets[key].value, expected)


def test_compare_shows_the_papers_row_only_where_the_setting_matches():
    from mixunlearn.store import RunStore

    store = RunStore()
    _synthetic_run(store, config={"dataset": "fashion_mnist", "forget": "class:0", "seed": 0})
    at = _app()
    _open(at, "pages/3_Compare.py")
    df = at.dataframe[0].value
    reported = df[df["source"] == "reported in the paper"]
    assert list(reported["method"]) == ["Retrain (paper)", "MixUnlearn (paper)"]
    from mixunlearn.paper import paper_row_for

    row = paper_row_for("fashion_mnist", "class:0", "mixunlearn")
    assert reported["Test_r"].iloc[1] == pytest.approx(row.metrics["test_r"][0])
    # The row right after each of ours is the paper's for the same method.
    assert list(df["method"])[:4] == ["Retrain", "Retrain (paper)", "MixUnlearn", "MixUnlearn (paper)"]


def test_default_demo_end_to_end_then_every_page_renders_its_content(shared_models):
    at = _app()
    at.button(key="demo_button").click().run()
    assert not at.exception and not at.error
    job = _wait(at, "experiment_job")
    assert job.state == jobs.DONE, job.error
    at.run()
    assert "finished" in _texts(at.success)
    run_id = job.result["run_id"]
    assert at.session_state["run_id"] == run_id

    _open(at, "pages/3_Compare.py")
    df = at.dataframe[0].value
    assert list(df["method"])[0] == "Retrain"
    ours = df[df["source"] == "this run"]
    expected = {"Retrain", "MixUnlearn", "FT", "NegGrad"}
    assert expected <= set(ours["method"])
    assert ours.loc[ours["method"] == "Retrain", "gap to Retrain"].iloc[0] == 0
    for col in ("Test_r", "Test_f", "ASR"):
        assert ((ours[col] >= 0) & (ours[col] <= 100)).all(), col
    assert "reported in the paper" not in set(df["source"])  # digits is not a paper setting
    assert len(_charts(at)) == 6  # metrics, gap; class-wise accuracy, prediction matrix, CKA, attack scores

    _open(at, "pages/4_Embeddings.py")
    charts = _charts(at)
    assert len(charts) == 1
    n_models = 5  # original, Retrain, MixUnlearn, FT, NegGrad
    titles = [a["text"] for a in charts[0]["layout"]["annotations"]]
    assert {"Original", "Retrain", "MixUnlearn"} <= set(titles)
    assert len(charts[0]["data"]) == 2 * n_models  # retained + forgotten traces per panel
    forgotten = [t for t in charts[0]["data"] if t["name"] == "forgotten class"]
    assert len(forgotten) == n_models and all(len(t["x"]) == len(forgotten[0]["x"]) for t in forgotten)
    at.radio(key="projection_method").set_value("pca").run()
    _wait(at, f"projection:{run_id}:pca", 120)
    at.run()
    assert not at.exception and len(_charts(at)) == 1

    _open(at, "pages/5_Loss_KDE.py")
    kde = _charts(at)
    assert len(kde) == 1 and len(kde[0]["data"]) == 3 * n_models
    table = at.dataframe[0].value
    assert ((table["distinguishability"] >= 0.5) & (table["distinguishability"] <= 1)).all()

    _open(at, "pages/6_Generator.py")
    grids = _charts(at)
    assert len(grids) == 4  # the grid, the health curves, the debug views and the training curves
    assert grids[0]["layout"]["annotations"][0]["text"] == figures.GEN_COLUMNS[0]
    assert [t["name"] for t in grids[1]["data"]] == list(figures.HEALTH_TITLES.values())
    assert [t["type"] for t in grids[2]["data"]] == ["heatmap"] * 6 and len(at.metric) == 5
    assert "λ = 0.5" in grids[0]["layout"]["title"]["text"]
    slider = at.select_slider(key=f"snapshot-{run_id}-mixunlearn")
    assert slider.options[0].startswith("update 0")
    slider.set_value(0).run()
    assert not at.exception and "update 0" in _charts(at)[0]["layout"]["title"]["text"]

    _open(at, "pages/2_Unlearn.py")
    assert "finished" in _texts(at.success)
    _open(at, "pages/1_Setup.py")
    assert len(_charts(at)) >= 1  # class samples and the D_f grid


def test_cancel_mid_run_leaves_no_complete_run_and_a_message():
    at = _app()  # empty model cache: the original must train, so the cancel lands mid-run
    at.button(key="demo_button").click().run()
    job = get_runner().get(at.session_state["experiment_job"])
    deadline = time.time() + 120
    while job.view(with_history=False).state == jobs.QUEUED or not job.progress.latest():
        assert time.time() < deadline
        time.sleep(0.1)
    at.run()
    at.button(key=f"cancel-{job.id}").click().run()
    assert not at.exception
    assert job.wait(120)
    assert job.state == jobs.CANCELLED
    at.run()
    assert "cancelled" in _texts(at.warning)
    from mixunlearn.store import RunStore

    store = RunStore()
    assert store.list_runs("complete") == []
    assert [r.status for r in store.list_runs(None)] == ["cancelled"]
    for page in ANALYSIS_PAGES:
        _open(at, page)
        assert "No finished run yet" in _texts(at.info)


def test_an_unavailable_dataset_is_an_error_not_an_exception():
    from mixunlearn.datasets import is_available

    if is_available("cifar10"):
        pytest.skip("CIFAR-10 files are present on this machine")
    at = _app()
    _open(at, "pages/1_Setup.py")
    at.selectbox(key="setup_dataset").set_value("cifar10").run()
    assert not at.exception
    assert "not on this machine" in _texts(at.error)
    assert at.button(key="train_button").disabled
    _open(at, "pages/2_Unlearn.py")
    at.button(key="run_button").click().run()
    assert not at.exception
    assert "not on this machine" in _texts(at.error)
    assert "experiment_job" not in at.session_state


def test_an_unreadable_store_is_a_message(tmp_path, monkeypatch):
    home = tmp_path / "broken"
    (home / "store").mkdir(parents=True)
    (home / "store" / "index.sqlite").write_bytes(b"this is not a database" * 100)
    monkeypatch.setenv("MIXUNLEARN_HOME", str(home))
    at = _app()
    assert not at.exception
    for page in ANALYSIS_PAGES:
        _open(at, page)  # no exception: a message saying what to do
        assert "MIXUNLEARN_HOME" in _texts(at.error), page
    at = _app()
    at.button(key="demo_button").click().run()
    assert not at.exception
    assert "run store" in _texts(at.error).lower()


def _synthetic_run(store, *, collapse: bool = False, config: dict | None = None, health: bool = True) -> str:
    """A run committed by hand with the snapshot schema of MixUnlearn (METHOD.md §9); ``health=False``
    leaves out the health numbers and debug views, as in runs stored before they were recorded."""
    g = torch.Generator().manual_seed(0)
    L, P, n = 3, 4, 60
    snaps = []
    for u in (0, 2, 4):
        mask = torch.full((L, P, 8, 8), 0.99) if collapse else torch.rand(L, P, 8, 8, generator=g)
        snaps.append({"update": u, "step": 4 * u, "lams": torch.tensor([0.25, 0.5, 0.75]),
                      "x_f": torch.rand(P, 1, 8, 8, generator=g), "x_r": torch.rand(P, 1, 8, 8, generator=g),
                      "mask": mask, "mixed": torch.rand(L, P, 1, 8, 8, generator=g),
                      "vanilla": torch.rand(L, P, 1, 8, 8, generator=g), "mask_mean": mask.mean((-2, -1)),
                      "mask_std": mask.std((-2, -1)), "pred": torch.randint(0, 10, (L, P), generator=g),
                      "f_cls": torch.full((P,), 3), "r_cls": torch.randint(0, 10, (P,), generator=g),
                      "p_f": torch.rand(L, P, generator=g), "p_r": torch.rand(L, P, generator=g),
                      "sim_f": torch.rand(L, P, generator=g), "sim_r": torch.rand(L, P, generator=g)})
        if health:
            snaps[-1].update({"h_share_err": torch.tensor(0.1 + u / 100), "h_share_slope": torch.tensor(0.9),
                              "h_std_mid": torch.tensor(0.05), "h_gain_retain": torch.tensor(0.02),
                              "h_gain_forget": torch.tensor(-0.01), "gain_r": torch.randn(L, P, generator=g),
                              "gain_f": torch.randn(L, P, generator=g), "debug_lam": torch.tensor(0.5),
                              "debug_value_f": torch.randn(P, 2, 2, generator=g),
                              "debug_value_r": torch.randn(P, 2, 2, generator=g),
                              "debug_attn_f": torch.softmax(torch.randn(P, 4, 4, generator=g), -1),
                              "debug_logit_diff": torch.randn(P, 2, 2, generator=g)})
    history = [{"step": s, "l_gen": -0.1 * s, "l_mix": 0.5 - 0.01 * s, "l_real": 0.2, "lam": 0.5,
                "mask_share": 0.5 + 0.001 * s, "mask_std": 0.1} for s in range(0, 40, 4)]
    models = ["original", "retrain", "mixunlearn"]
    y = torch.arange(n) % 10
    y_retain = torch.tensor([c for c in range(10) if c != 3] * 3)[:20]
    pack = analysis.AnalysisPack(models, (3,), torch.arange(n), y, torch.zeros(n, 1, 8, 8, dtype=torch.uint8),
                                 torch.arange(10), torch.full((10,), 3), torch.arange(10, 30), y_retain)
    for m in models:
        pack.features[m] = torch.randn(n, 6, generator=g)
        pack.logits_test[m] = torch.randn(n, 10, generator=g)
        pack.logits_forget[m] = torch.randn(10, 10, generator=g)
        pack.logits_retain[m] = torch.randn(20, 10, generator=g)
    tensors = {**pack.to_tensors(), **analysis.snapshots_to_tensors("mixunlearn", snaps),
               **analysis.history_to_tensors("mixunlearn", history)}
    metrics = {"test_r": 90.0, "test_f": 0.0, "asr": 50.0, "ua": 100.0, "ra": 95.0, "ta": 90.0, "mia_efficacy": 80.0,
               "train_r": 95.0, "train_f": 0.0, "test": 81.0}
    results = {"config": config or {"dataset": "digits", "forget": "class:3", "seed": 0},
               "original": {"metrics": metrics},
               "methods": {"retrain": {"metrics": metrics, "seconds": 1.0, "gap_to_retrain": 0.0, "status": "done"},
                           "mixunlearn": {"metrics": metrics, "seconds": 0.5, "gap_to_retrain": 0.0,
                                          "status": "done"}},
               "info": {"level": "class"},
               "app": {"models": models, "display": {"original": "Original", "retrain": "Retrain",
                                                     "mixunlearn": "MixUnlearn"},
                       "class_names": [str(i) for i in range(10)], "forget_classes": [3]}}
    run_id = store.begin(results["config"], label="synthetic")
    store.commit(run_id, results, tensors, {"config.json": "{}", "metrics.csv": jobs.comparison_csv(results)})
    return run_id


@pytest.fixture
def nan_method():
    """A throwaway method whose loss becomes NaN (removed from the registry afterwards)."""
    from dataclasses import dataclass

    from mixunlearn.methods import base
    from mixunlearn.progress import NonFiniteLossError

    @dataclass(frozen=True)
    class NanConfig(base.MethodConfig):
        steps: int = base.param(1, "steps", min=1, max=10)

    def nan_fn(model, data, cfg, *, device, callbacks):
        raise NonFiniteLossError("nan_test", 3, "loss ce")

    base.register_method("nan_test", config=NanConfig, labels="aware", summary="always NaN", paper="test",
                         display="NaN test")(nan_fn)
    yield "nan_test"
    base._REGISTRY.pop("nan_test", None)


def test_a_method_that_failed_with_nan_is_a_clear_message_on_compare(shared_models, nan_method):
    from mixunlearn.experiment import ExperimentConfig
    from mixunlearn.store import RunStore

    cfg = ExperimentConfig(dataset="digits", forget="class:3", methods=("retrain", nan_method, "neggrad"), seed=0,
                           device="cpu")
    job = get_runner().submit(jobs.experiment_job(cfg, store=RunStore(), cache=shared_models, project=None))
    assert job.wait(300) and job.state == jobs.DONE, job.error
    at = _app()
    _open(at, "pages/3_Compare.py")
    errors = _texts(at.error)
    assert "NaN test failed and has no metrics" in errors and "step 3" in errors and "learning rate" in errors
    df = at.dataframe[0].value
    assert df.loc[df["method"] == "NaN test", "status"].iloc[0] == "failed"
    assert df.loc[df["method"] == "NegGrad", "status"].iloc[0] == "done"  # the others went on


def test_generator_page_on_a_synthetic_snapshot_run():
    from mixunlearn.store import RunStore

    run_id = _synthetic_run(RunStore())
    at = _app()
    _open(at, "pages/6_Generator.py")
    grid, health, debug, curves = _charts(at)
    assert [a["text"] for a in grid["layout"]["annotations"][:5]] == list(figures.GEN_COLUMNS)
    heatmaps = [t for t in grid["data"] if t["type"] == "heatmap"]
    masks = [t for t in heatmaps if t.get("colorscale") and t["colorscale"][0][1] != "rgb(0,0,0)"
             and t.get("name") == "mask"]
    assert len(masks) == 4 and all((m["zmin"], m["zmax"]) == (0, 1) for m in masks)  # fixed 0-1 scale
    assert {t["name"] for t in curves["data"]} >= {"l_gen", "l_mix", "l_real", "mean mask share"}
    at.radio(key=f"lambda-{run_id}-mixunlearn").set_value(2).run()
    assert "λ = 0.75" in _charts(at)[0]["layout"]["title"]["text"]
    assert not at.warning  # no collapse flagged
    # health: one line per number over the three updates, the selected (last) snapshot marked
    assert [t["name"] for t in health["data"]] == list(figures.HEALTH_TITLES.values())
    assert all(t["x"] == [0, 2, 4] for t in health["data"])
    assert health["data"][0]["y"] == pytest.approx([0.1, 0.12, 0.14])
    assert {sh["x0"] for sh in health["layout"]["shapes"] if sh["yref"].endswith("domain")} == {4}
    assert [m.label for m in at.metric] == list(figures.HEALTH_TITLES.values())
    assert at.metric[0].value == "0.140" and at.metric[4].value == "-0.010"
    # debug views of pair 0 at λ = 0.5: value maps, logits, mask, attention, attention received
    assert [t["type"] for t in debug["data"]] == ["heatmap"] * 6
    assert "pair 0" in debug["layout"]["title"]["text"] and "λ = 0.5" in debug["layout"]["title"]["text"]
    # v_f, v_r and m_i − m_j are h x w, the mask H x W, the attention h·w x h·w, the attention received h x w
    assert [_z_shape(t["z"]) for t in debug["data"]] == [(2, 2)] * 3 + [(8, 8), (4, 4), (2, 2)]
    assert not at.error  # the page's guard turns an exception into an error message
    at.selectbox(key=f"debug-pair-{run_id}-mixunlearn").set_value(3).run()
    assert not at.exception and not at.error and "pair 3" in _charts(at)[2]["layout"]["title"]["text"]
    at.select_slider(key=f"snapshot-{run_id}-mixunlearn").set_value(0).run()
    assert not at.exception and not at.error
    health = _charts(at)[1]
    assert {sh["x0"] for sh in health["layout"]["shapes"] if sh["yref"].endswith("domain")} == {0}
    assert at.metric[0].value == "0.100"
    assert "stored before" not in _texts(at.caption)


def test_generator_page_on_an_old_run_without_health_or_debug_views():
    from mixunlearn.store import RunStore

    _synthetic_run(RunStore(), health=False)
    at = _app()
    _open(at, "pages/6_Generator.py")
    assert not at.error
    grid, curves = _charts(at)  # the mask grid and the training curves; no health or debug figure
    assert [a["text"] for a in grid["layout"]["annotations"][:5]] == list(figures.GEN_COLUMNS)
    assert {t["name"] for t in curves["data"]} >= {"l_gen", "l_mix"}
    assert not at.metric and not [b for b in at.selectbox if str(b.key).startswith("debug-pair")]
    assert "stored before MixUnlearn recorded them" in _texts(at.caption)


def test_generator_page_on_a_metrics_only_run_says_so():
    """A run stored by ``python -m mixunlearn run --store`` has MixUnlearn's metrics but no snapshots:
    the page says it was stored with metrics only (it used to say MixUnlearn "used no generator")."""
    from mixunlearn.store import RunStore

    store = RunStore()
    metrics = {"test_r": 90.0, "test_f": 0.0, "asr": 50.0}
    results = {"config": {"dataset": "digits", "forget": "class:3", "seed": 0}, "original": {"metrics": metrics},
               "methods": {"retrain": {"metrics": metrics, "seconds": 1.0, "status": "done"},
                           "mixunlearn": {"metrics": metrics, "seconds": 0.5, "status": "done"}},
               "info": {"level": "class"}}
    store.commit(store.begin(results["config"], label="cli"), results)
    at = _app()
    _open(at, "pages/6_Generator.py")
    shown = _texts(at.info)
    assert "stored with its metrics only" in shown
    assert "used no generator" not in shown


def test_generator_page_flags_a_collapsed_mask():
    from mixunlearn.store import RunStore

    _synthetic_run(RunStore(), collapse=True)
    at = _app()
    _open(at, "pages/6_Generator.py")
    assert "Collapse" in _texts(at.warning)


def test_learn_page_runs_the_toy_and_shows_the_boundaries():
    at = _app()
    _open(at, "pages/7_Learn.py")
    job = _wait(at, "toy_job", 120)
    assert job.state == jobs.DONE, job.error
    at.run()
    assert not at.exception
    fig = _charts(at)[0]
    assert len([t for t in fig["data"] if t["type"] == "heatmap"]) == 4  # before, Retrain, without, with mixup
    table = at.dataframe[0].value
    assert table["forget acc (%)"].iloc[1] == 0.0  # Retrain never predicts the forgotten blob's class


def test_toy_is_deterministic_and_retrain_forgets_the_blob():
    from mixunlearn.toy import ToyConfig, run_toy

    cfg = ToyConfig(n_per_blob=60, train_steps=120, unlearn_steps=30, grid=20, seed=1)
    a, b = run_toy(cfg), run_toy(cfg)
    assert a.metrics == b.metrics
    assert np.array_equal(a.panels["mixup"], b.panels["mixup"])
    assert a.metrics["original"]["forget_acc"] > 70
    assert a.metrics["retrain"]["forget_acc"] == 0.0
    with pytest.raises(ValueError, match="forget"):
        run_toy(ToyConfig(n_blobs=2, forget=2))


def test_selected_samples_maps_a_selection_back_to_panels_and_samples():
    layouts = {"original": np.random.default_rng(0).normal(size=(12, 2)),
               "retrain": np.random.default_rng(1).normal(size=(12, 2))}
    labels = np.arange(12) % 4
    fig = figures.embedding_grid(layouts, labels, [1])
    # Every trace's customdata holds (sample index, panel index), the contract the page relies on.
    for trace in fig.data:
        cd = np.asarray(trace.customdata)
        panel = int(cd[0, 1])
        names = list(layouts)
        np.testing.assert_allclose(np.asarray(trace.x), layouts[names[panel]][cd[:, 0].astype(int), 0])
    points = [{"customdata": [5, 1]}, {"customdata": [2, 1]}, {"customdata": [5, 1]}, {"customdata": [7, 0]},
              {"x": 1.0}]
    assert figures.selected_samples(points) == {0: [7], 1: [2, 5]}
