"""Where a method differs from Retrain (mixunlearn/diagnostics.py): linear CKA against a hand
computation and its invariances; on digits class 3 per-class accuracy, CKA and ToW of Retrain,
FT, NegGrad and MixUnlearn; the offline report (CLI, Chromium with the network blocked); the
Compare page's new views on a class-level, a data-level and an old run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mixunlearn import analysis, diagnostics, jobs, report
from mixunlearn.experiment import ExperimentConfig, run_experiment
from mixunlearn.metrics import gap_to_retrain

CHEAP = {"finetune": {"epochs": 1}, "neggrad": {"epochs": 1}, "mixunlearn": {"max_steps": 12}}


# --------------------------------------------------------------------------- CKA


def _hand_cka(x: np.ndarray, y: np.ndarray) -> float:
    """The feature-space formula of Kornblith et al. (2019), eq. (5), on centred features."""
    x = x - x.mean(0)
    y = y - y.mean(0)
    return float(np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))


def test_linear_cka_matches_the_hand_computation_and_has_the_documented_invariances():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 8))
    y = x @ rng.normal(size=(8, 5)) + 0.5 * rng.normal(size=(60, 5))
    base = diagnostics.linear_cka(x, y)
    assert base == pytest.approx(_hand_cka(x, y), rel=1e-10)
    assert 0.0 < base < 1.0
    assert diagnostics.linear_cka(x, x) == pytest.approx(1.0)
    q, _ = np.linalg.qr(rng.normal(size=(8, 8)))  # orthogonal
    assert diagnostics.linear_cka(x @ q, y) == pytest.approx(base, rel=1e-10)
    assert diagnostics.linear_cka(x, x @ q) == pytest.approx(1.0)
    assert diagnostics.linear_cka(7.5 * x, 0.01 * y) == pytest.approx(base, rel=1e-10)  # isotropic scaling
    assert diagnostics.linear_cka(x + 3.0, y - 2.0) == pytest.approx(base, rel=1e-10)  # centred first
    m = np.diag(np.geomspace(1.0, 50.0, 8)) @ rng.normal(size=(8, 8))  # invertible, neither orthogonal nor isotropic
    assert abs(np.linalg.det(m)) > 1e-6
    assert diagnostics.linear_cka(x, x @ m) < 0.95
    assert np.isnan(diagnostics.linear_cka(np.ones((10, 3)), y[:10]))  # a constant representation
    with pytest.raises(ValueError, match="same examples"):
        diagnostics.linear_cka(x, y[:10])


def test_tow_is_the_product_over_forget_retain_test_and_leaves_the_gap_alone():
    retrain = {"train_f": 0.0, "train_r": 100.0, "ta": 98.0, "asr": 30.0, "test_r": 98.0, "test_f": 0.0}
    m = {"train_f": 10.0, "train_r": 99.0, "ta": 96.0, "asr": 50.0, "test_r": 96.0, "test_f": 4.0}
    assert diagnostics.tow(m, retrain) == pytest.approx(100 * 0.90 * 0.99 * 0.98)
    assert diagnostics.tow(m, retrain, mia=True) == pytest.approx(100 * 0.80 * 0.99 * 0.98)
    assert diagnostics.tow(retrain, retrain) == 100.0
    before = gap_to_retrain(m, retrain, "class")
    diagnostics.add_tow(m, retrain)
    assert gap_to_retrain(m, retrain, "class") == before
    assert np.isnan(diagnostics.tow({"train_r": 1.0}, retrain))


def test_bench_tables_carry_tow_even_for_seed_documents_written_before_it():
    from mixunlearn.bench import summarise, to_markdown

    retrain = {"test_r": 99.0, "test_f": 0.0, "asr": 30.0, "train_f": 0.0, "train_r": 100.0, "ta": 99.0}
    ft = {"test_r": 98.0, "test_f": 50.0, "asr": 40.0, "train_f": 60.0, "train_r": 100.0, "ta": 98.0}
    old = {"info": {"level": "class"}, "methods": {"retrain": {"status": "done", "metrics": retrain, "seconds": 5},
                                                   "finetune": {"status": "done", "metrics": ft, "seconds": 1}}}
    rows = {r["method"]: r for r in summarise([old, old])}
    assert rows["finetune"]["tow"] == pytest.approx(100 * 0.4 * 1.0 * 0.99)
    assert rows["finetune"]["gap_to_retrain"] == pytest.approx((1 + 50 + 10) / 3)  # the gap is unchanged
    head = to_markdown(list(rows.values()), "class").splitlines()[0]
    assert "| tow |" in head and "| tow_mia |" in head
    assert "tow" not in old["methods"]["finetune"]["metrics"]  # the documents themselves are left alone


# --------------------------------------------------------------------------- a digits run


@pytest.fixture(scope="module")
def class_run(digits_class3, session_cache):
    data = digits_class3[0]
    cfg = ExperimentConfig(dataset="digits", forget="class:3", recipe="digits", seed=0,
                           methods=("retrain", "finetune", "neggrad", "mixunlearn"), params=CHEAP)
    return run_experiment(cfg, cache=session_cache, keep_models=True, data=data)


def test_class_3_per_class_accuracy_cka_and_tow(class_run):
    doc = class_run.to_json()
    methods = doc["methods"]
    layers = doc["info"]["diagnostics"]["cka_layers"]
    assert layers == list(diagnostics.BLOCKS["digits"])
    assert methods["retrain"]["per_class"]["3"] == 0.0
    assert methods["finetune"]["per_class"]["3"] > 80.0
    assert methods["retrain"]["cka"]["to_retrain"] == pytest.approx([1.0] * len(layers), abs=1e-6)
    assert doc["original"]["cka"]["to_original"] == pytest.approx([1.0] * len(layers), abs=1e-6)
    assert all(len(m["cka"]["to_original"]) == len(layers) for m in methods.values())
    assert min(methods["finetune"]["cka"]["to_retrain"]) < 0.999  # a different model is not 1
    tows = {n: m["metrics"]["tow"] for n, m in methods.items()} | {"original": doc["original"]["metrics"]["tow"]}
    assert max(tows, key=tows.get) == "retrain" and tows["retrain"] == 100.0
    assert tows["finetune"] < 50.0  # FT still classifies D_f
    assert "tow_mia" in methods["mixunlearn"]["metrics"]
    for rec in methods.values():  # the gap is still the protocol's metric set, ToW not in it
        assert rec["gap_to_retrain"] == pytest.approx(
            gap_to_retrain(rec["metrics"], methods["retrain"]["metrics"], "class"), abs=1e-3)
    pm = methods["finetune"]["prediction_matrix"]
    n_forget = doc["info"]["n_forget"]
    assert sum(map(sum, pm["forget"])) == n_forget == sum(pm["forget"][3])
    assert sum(map(sum, pm["test"])) == doc["info"]["n_test"]
    view = diagnostics.attack_view(class_run.diagnostics, report.model_order(doc))
    assert view.models == ["retrain", "finetune", "neggrad", "mixunlearn", "original"]
    assert len(view.indices["forget"]) == min(n_forget, diagnostics.ATTACK_SUBSET)
    for m in view.models:
        for s in diagnostics.ATTACK_SETS:
            v = view.scores[m][s]
            assert len(v) == len(view.indices[s]) and np.all((v >= 0) & (v <= 1))
    # the attacker reused from the ASR's evaluation is the one a fresh fit gives (same samples, same seed)
    data = class_run.data
    fresh = diagnostics.Diagnoser(data, 0, class_run.models["original"], class_run.models["retrain"])
    fresh.add("finetune", class_run.models["finetune"])
    for s in diagnostics.ATTACK_SETS:
        assert np.array_equal(fresh.result.scores["finetune"][s].numpy(), view.scores["finetune"][s].astype(np.float32))
    assert fresh.result.json["finetune"]["cka"] == methods["finetune"]["cka"]
    # Retrain never saw D_f: the attack calls its D_f less "member" than the original's
    assert np.median(view.scores["retrain"]["forget"]) < np.median(view.scores["original"]["forget"])
    json.dumps(doc, allow_nan=False)


def test_a_run_without_analyses_has_the_metrics_and_no_diagnostics(digits_class3, session_cache):
    cfg = ExperimentConfig(dataset="digits", forget="class:3", recipe="digits", seed=0, methods=("retrain",),
                           attacks=False)
    doc = run_experiment(cfg, cache=session_cache, data=digits_class3[0], analyses=False).to_json()
    assert "per_class" not in doc["methods"]["retrain"] and "diagnostics" not in doc["info"]
    metrics = doc["methods"]["retrain"]["metrics"]
    assert metrics["tow"] == 100.0 and "tow_mia" not in metrics


# --------------------------------------------------------------------------- the report


def _write_run(result, out: Path) -> None:
    from mixunlearn.cli import write_tensors

    result.write(out)
    write_tensors(out / report.TENSORS_FILE, report.result_tensors(result))


def test_report_cli_writes_one_offline_file_that_chromium_draws(class_run, tmp_path):
    from playwright.sync_api import sync_playwright

    from mixunlearn.cli import main

    assert main(["report", str(tmp_path / "nothing-here")]) == 2
    out = tmp_path / "run"
    _write_run(class_run, out)
    assert main(["report", str(out)]) == 0
    page_file = out / "report.html"
    text = page_file.read_text()
    assert "<script src=" not in text and "not recorded" not in text
    requests: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium")
        page = browser.new_page()

        def route(r):
            requests.append(r.request.url)
            (r.continue_() if r.request.url.startswith("file:") else r.abort())

        page.route("**/*", route)
        page.goto(page_file.as_uri())
        page.wait_for_function("document.querySelectorAll('.js-plotly-plot .main-svg').length >= 8", timeout=30_000)
        n_plots = page.locator(".js-plotly-plot").count()
        n_images = page.evaluate("[...document.images].filter(i => i.complete && i.naturalWidth > 0).length")
        headings = page.locator("h2").all_inner_texts()
        browser.close()
    assert [u for u in requests if not u.startswith("file:")] == []
    assert n_plots == 7  # metrics, gap, class-wise, two prediction matrices, CKA, attack
    assert n_images >= 5  # the generator's forget, retain, mask, mix and vanilla images
    assert "layer-wise similarity (linear CKA)" in headings and "Generator: masks and mixes" in headings


def test_report_of_an_old_run_says_what_is_not_recorded():
    old = {"config": {"dataset": "digits", "forget": "class:3", "seed": 0},
           "info": {"level": "class"},
           "methods": {"retrain": {"metrics": {"test_r": 99.0, "test_f": 0.0, "asr": 30.0}, "status": "done"},
                       "finetune": {"metrics": {"test_r": 98.0, "test_f": 50.0, "asr": 40.0}, "status": "done",
                                    "gap_to_retrain": 20.0}}}
    text = report.build_report(old)
    assert text.count(report.NOT_RECORDED) >= 5 and "FT" in text


# --------------------------------------------------------------------------- the Compare page


def _store(result, data) -> str:
    from mixunlearn.store import RunStore

    order = ["original", "retrain"] + [m for m in result.methods if m != "retrain" and m in result.models]
    pack = analysis.build_pack({m: result.models[m] for m in order}, data, n_test=200, n_forget=100,
                               n_retain=100, seed=0)
    results, tensors, files = jobs.run_payload(result, pack)
    st = RunStore()
    run_id = st.begin(result.config.to_dict())
    st.commit(run_id, results, tensors, files)
    return run_id


def _compare():
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app.py"), default_timeout=60)
    at.run()
    at.switch_page("pages/3_Compare.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    specs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    return at, specs


def test_compare_shows_every_new_view_on_a_class_level_run(class_run, digits_class3):
    run_id = _store(class_run, digits_class3[0])
    at, specs = _compare()
    heat = [s for s in specs if s["data"] and s["data"][0]["type"] == "heatmap" and "Δ to" in str(s["data"][0])]
    assert len(heat) == 1 and len(heat[0]["data"][0]["y"]) == 5  # Retrain, FT, NegGrad, MixUnlearn, Original
    texts = "\n".join(str(m.value) for m in at.markdown) + "\n".join(str(c.value) for c in at.caption)
    assert "Layer-wise similarity" in texts and "not recorded" not in texts
    assert at.selectbox(key="pm_method").options == ["FT", "NegGrad", "MixUnlearn", "Original"]
    at.selectbox(key="pm_method").set_value("mixunlearn")
    at.radio(key="pm_split").set_value("test").run()
    assert not at.exception and not at.error
    at.radio(key="attack_set").set_value("forget").run()
    first = at.selectbox(key="attack_example").value
    at.selectbox(key="attack_example").set_value(first + 1 if first == 0 else 0).run()
    assert not at.exception and not at.error
    frames = [d.value for d in at.dataframe]
    rows = [f for f in frames if "attack score P(member)" in f.columns][0]
    assert list(rows["model"]) == ["Retrain", "FT", "NegGrad", "MixUnlearn", "Original"]
    assert rows["Δ score to Retrain"].iloc[0] == 0.0
    assert len(at.get("image")) >= 1
    metrics = [f for f in frames if "ToW" in f.columns][0]
    assert metrics["ToW"].iloc[0] == 100.0
    del run_id


def test_compare_shows_the_views_on_a_data_level_run_and_says_what_an_old_run_lacks(digits_data_level,
                                                                                   session_cache):
    from mixunlearn.store import RunStore

    data = digits_data_level[0]
    cfg = ExperimentConfig(dataset="digits", forget="data:5-9:0.4", recipe="digits", seed=0,
                           methods=("retrain", "finetune"), params={"finetune": {"epochs": 1}})
    result = run_experiment(cfg, cache=session_cache, keep_models=True, data=data)
    _store(result, data)
    at, specs = _compare()
    assert at.selectbox(key="pm_method").options == ["FT", "Original"]
    assert at.radio(key="attack_set").options == ["forgotten (D_f)", "retained (D_r)", "held-out test (T_B)"]
    assert any(t["type"] == "box" for s in specs for t in s["data"])
    # an old run (stored before the analyses) opens and says what it lacks
    st = RunStore()
    old = {"config": {"dataset": "digits", "forget": "class:3", "seed": 0}, "info": {"level": "class"},
           "methods": {"retrain": {"metrics": {"test_r": 99.0, "test_f": 0.0, "asr": 30.0}, "status": "done"}}}
    run_id = st.begin(old["config"])
    st.commit(run_id, old, {"x": torch.zeros(1)})
    at, _ = _compare()
    info = "\n".join(str(i.value) for i in at.info)
    assert info.count("not recorded for this run") == 4
