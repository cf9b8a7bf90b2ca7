"""bench/tune_all.py's bookkeeping (no training): the order workers take studies in, the claim that
keeps two ``--jobs`` workers off one study, and the validation table read from best.json files."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("tune_all", ROOT / "bench" / "tune_all.py")
tune_all = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tune_all)


def args(**kw):
    base = {"settings": ["class:0", "data:5-9:0.4"], "methods": None, "first": "salun,finetune",
            "trials": 20, "tune_seeds": [0, 1]}
    return argparse.Namespace(**{**base, **kw})


def test_studies_put_first_methods_first_per_setting_and_cover_every_method():
    pairs = tune_all.studies(args())
    assert pairs[:2] == [("class:0", "salun"), ("class:0", "finetune")]
    data = [p for p in pairs if p[0] == "data:5-9:0.4"]
    assert pairs.index(data[0]) == len(pairs) - len(data)  # every class:0 study before the data ones
    assert data[:2] == [("data:5-9:0.4", "salun"), ("data:5-9:0.4", "finetune")]
    assert ("class:0", "unsir") in pairs and ("data:5-9:0.4", "unsir") not in pairs  # class-only
    assert not any(m == "retrain" for _, m in pairs) and len(set(pairs)) == len(pairs)


def test_a_study_held_by_a_live_worker_is_skipped_and_a_dead_workers_claim_is_taken(tmp_path):
    where = tmp_path / "study"
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        where.mkdir()
        (where / ".worker").write_text(str(other.pid))
        assert not tune_all.claim(where)
    finally:
        other.kill()
        other.wait()
    assert tune_all.claim(where)  # its process is gone
    assert (where / ".worker").read_text() == str(os.getpid())
    assert tune_all.claim(where)  # this process holds it already
    tune_all.release(where)
    assert not (where / ".worker").exists()


def test_validation_table_reads_best_files_and_sorts_by_tuned_gap(tmp_path, monkeypatch):
    monkeypatch.setattr(tune_all, "DATASET", "fashion_mnist")
    a = args(settings=["class:0"], methods=["finetune", "salun"])
    for method, gap, shipped, n in (("finetune", 0.5, 0.9, 20), ("salun", 0.3, 0.3, 7)):
        d = tune_all.study_dir(tmp_path, "class:0", method)
        d.mkdir(parents=True)
        (d / "best.json").write_text(json.dumps({
            "gap": gap, "shipped_gap": shipped, "trials": n - 2, "failed": 1, "stopped_over_cap": 1,
            "best_trial": 3, "best_time_ratio": 0.2, "best_is_shipped": method == "salun",
            "params": {"lr": 0.001, "augment": True}}))
    text = tune_all.validation_table(a, tmp_path)
    rows = [line for line in text.splitlines() if line.startswith("| finetune") or line.startswith("| salun")]
    assert rows[0].startswith("| salun (running, 7/20) | 5 / 1 / 1 | 0.30 | 0.30 |") and "shipped" in rows[0]
    assert rows[1].startswith("| finetune | 18 / 1 / 1 | 0.90 | 0.50 | 3 | 0.200 | – | lr 0.001, augment true |")


def test_floor_is_the_gap_of_seed_means_per_retrain_and_ranking_uses_validation_choices(tmp_path):
    from mixunlearn.metrics import gap_to_retrain

    ref = {"test_r": 90.0, "test_f": 0.0, "asr": 40.0}
    # Two alt Retrains over two seeds: per seed they err in opposite directions, so their seed
    # means sit on Retrain's (gap 0 for alt 0) -- the mean of per-run gaps would not.
    rows = [{"alt": a, "seed": s, "spec": "class:0", "level": "class", "retrain": ref,
             "metrics": {"test_r": 90.0 + d, "test_f": 0.0, "asr": 40.0}}
            for a, ds in ((0, (1.0, -1.0)), (1, (3.0, 3.0))) for s, d in zip((0, 1), ds)]
    (tmp_path / "floor.json").write_text(json.dumps({"rows": rows}))
    mean, sd, n = tune_all.floor_gap(tmp_path / "floor.json")
    one = gap_to_retrain({"test_r": 93.0, "test_f": 0.0, "asr": 40.0}, ref, "class")
    assert n == 2 and mean == one / 2 and sd > 0
    assert tune_all.floor_gap(tmp_path / "missing.json") is None

    shipped = {"retrain": {"gap_to_retrain": "0"}, "finetune": {"gap_to_retrain": "0.9"},
               "mixunlearn": {"gap_to_retrain": "0.2"}, "salun": {"gap_to_retrain": "0.5"}}
    tuned = {"finetune": {"gap_to_retrain": "0.1"}, "mixunlearn": {"gap_to_retrain": "0.4"}}
    lines = tune_all.ranking(shipped, tuned, (0.3, 0.05, 2))
    assert lines[0].startswith("- Shipped settings, closest first: mixunlearn 0.20, salun 0.50, finetune 0.90.")
    assert "mixunlearn 0.20 (rank 1 of 3)" in lines[0] and "Closest minus floor: -0.10" in lines[0]
    # Tuned: SalUn has no study, so its shipped row stands; MixUnlearn's tuned row is worse on test
    # than its shipped one, and the ranking keeps the row validation chose.
    assert lines[1].startswith("- Tuned settings, closest first: finetune 0.10, mixunlearn 0.40, salun 0.50.")
    assert "mixunlearn 0.40 (rank 2 of 3)" in lines[1] and "mixunlearn minus floor: +0.10" in lines[1]
    assert lines[1].endswith("No tuned row (yet), so the shipped row stands in: salun.")
    assert "stands in" not in tune_all.ranking(shipped, {**tuned, "salun": shipped["salun"]}, None)[1]


def test_jobs_start_workers_with_the_same_arguments_but_jobs(monkeypatch):
    started = []

    class Proc:
        def __init__(self, cmd, cwd):
            started.append(cmd)

        def wait(self):
            return 0

    monkeypatch.setattr(tune_all.subprocess, "Popen", Proc)
    monkeypatch.setattr(sys, "argv", ["tune_all.py", "--out", "X", "--jobs", "2", "--threads", "1", "--jobs=3"])
    assert tune_all.tune_jobs(argparse.Namespace(jobs=2)) == 0
    assert len(started) == 2
    assert started[0][2:] == ["--out", "X", "--threads", "1", "--phase", "tune"]


def test_tables_parts_run_only_their_bench_with_fixed_threads_and_validation_choices(tmp_path, monkeypatch):
    ran = []
    monkeypatch.setattr(tune_all.subprocess, "run", lambda cmd, **kw: ran.append(cmd))
    d = tune_all.study_dir(tmp_path, "class:0", "scrub_r")
    d.mkdir(parents=True)
    (d / "best.json").write_text(json.dumps({"gap": 0.5, "shipped_gap": 0.6, "params": {"rewind_epoch": 2},
                                             "trials": 12, "failed": 3, "stopped_over_cap": 5,
                                             "shipped_chosen_on_validation": {"rewind_epoch": 2}}))
    a = args(settings=["class:0"], methods=["finetune", "scrub_r"], seeds=[0, 1, 2], threads=1, device="cpu",
             ray=None, floor_alt=3)
    for part, expect in (("shipped", "shipped"), ("tuned", "tuned"), ("floor", "floor")):
        ran.clear()
        tune_all.tables_phase(argparse.Namespace(**{**vars(a), "part": part}), tmp_path)
        assert len(ran) == 1 and any(str(x).endswith(expect) for x in ran[0]), (part, ran)
        assert ran[0][ran[0].index("--threads") + 1] == "1"
    assert ran[0][ran[0].index("--alt") + 1] == "3"
    floor = tmp_path / "tables" / "fashion_mnist-class_0" / "floor" / "floor.json"
    floor.parent.mkdir(parents=True)
    m = {"test_r": 90.0, "test_f": 0.0, "asr": 40.0}
    floor.write_text(json.dumps({"rows": [{"alt": a, "seed": s, "spec": "class:0", "level": "class", "metrics": m,
                                           "retrain": m}
                                          for a in (0, 1, 2) for s in (0, 1, 2)]}))
    ran.clear()
    tune_all.tables_phase(argparse.Namespace(**{**vars(a), "part": "floor"}), tmp_path)
    assert ran == []  # the stored floor has the 3 Retrains per seed asked for
    ran.clear()
    tune_all.tables_phase(argparse.Namespace(**{**vars(a), "part": "floor", "floor_alt": 4}), tmp_path)
    assert len(ran) == 1  # it is extended
    ran.clear()
    tune_all.tables_phase(argparse.Namespace(**{**vars(a), "part": "floor", "seeds": [0, 1, 3]}), tmp_path)
    assert len(ran) == 1  # a floor measured on other seeds is measured again
    floor.unlink()
    ran.clear()
    tune_all.tables_phase(argparse.Namespace(**{**vars(a), "part": "shipped"}), tmp_path)
    assert "scrub_r.rewind_epoch=2" in ran[0]  # the shipped row uses trial 0's choice, not the test split
    ran.clear()
    tune_all.tables_phase(argparse.Namespace(**{**vars(a), "part": "tuned"}), tmp_path)
    assert ran[0][ran[0].index("--methods") + 1] == "retrain,scrub_r"  # only methods with a study
    assert str(d / "best.json") in ran[0]
    # A study whose best trial is the shipped one is not run again: its tuned row is the shipped row.
    f = tune_all.study_dir(tmp_path, "class:0", "finetune")
    f.mkdir(parents=True)
    (f / "best.json").write_text(json.dumps({"gap": 0.7, "shipped_gap": 0.7, "params": {}, "best_is_shipped": True,
                                             "trials": 20}))
    # A study still running (fewer counted trials than --trials) gives no tuned row yet.
    e = tune_all.study_dir(tmp_path, "class:0", "eu_k")
    e.mkdir(parents=True)
    (e / "best.json").write_text(json.dumps({"gap": 0.2, "shipped_gap": 0.9, "params": {"k": 2}, "trials": 5}))
    a = argparse.Namespace(**{**vars(a), "methods": ["finetune", "scrub_r", "eu_k"]})
    ran.clear()
    tune_all.tables_phase(argparse.Namespace(**{**vars(a), "part": "tuned"}), tmp_path)
    assert ran[0][ran[0].index("--methods") + 1] == "retrain,scrub_r"
    base = tmp_path / "tables" / "fashion_mnist-class_0"
    (base / "shipped").mkdir(parents=True)
    head = "method,gap_to_retrain,time_ratio_to_retrain,test_r,test_r_std,test_f,test_f_std,asr,asr_std\n"
    (base / "shipped" / "table.csv").write_text(head + "retrain,0,1,90,0,0,0,40,0\nfinetune,0.9,0.1,91,1,0,0,42,1\n"
                                                "scrub_r,0.6,1.1,90,1,0,0,41,1\n")
    (base / "tuned").mkdir()
    (base / "tuned" / "table.csv").write_text(head + "retrain,0,1,90,0,0,0,40,0\nscrub_r,0.3,1.1,90,1,0,0,40.5,1\n")
    ran.clear()
    tune_all.tables_phase(argparse.Namespace(**{**vars(a), "part": "compare"}), tmp_path)
    text = (base / "comparison.md").read_text()
    assert ran == [] and "| finetune | tuned = shipped | 91.00 ± 1.00 |" in text
    assert "| scrub_r | tuned | 90.00 ± 1.00 |" in text
    assert "- Tuned settings, closest first: scrub_r 0.30, finetune 0.90." in text


def test_cheapest_corner_takes_the_lowest_budgets_and_the_largest_batches():
    from mixunlearn.tune import search_space

    spec = importlib.util.spec_from_file_location("cheapest_corner", ROOT / "bench" / "cheapest_corner.py")
    corner_mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(corner_mod)
    dims = {d.name: d for d in search_space("laf_r", "cnn:fast")}
    corner = corner_mod.cheapest_corner(list(dims.values()))
    assert corner["epochs"] == corner["vae_epochs"] == corner["head_epochs"] == 1
    assert corner["batch_size"] == dims["batch_size"].high == 128 and corner["vae_batch_size"] == 128
    assert corner["lr_ue"] == dims["lr_ue"].default and corner["reduction"] == dims["reduction"].default


def test_publish_phase_copies_finished_studies_to_the_apps_folder(tmp_path, monkeypatch):
    from mixunlearn.tune import tuned_folder

    monkeypatch.setenv("MIXUNLEARN_HOME", str(tmp_path / "home"))
    a = args(settings=["class:0"], methods=["finetune", "salun"])
    for method, n in (("finetune", 20), ("salun", 7)):
        d = tune_all.study_dir(tmp_path, "class:0", method)
        d.mkdir(parents=True)
        (d / "best.json").write_text(json.dumps({
            "method": method, "dataset": "fashion_mnist", "forget": "class:0", "recipe": "cnn_fast",
            "level": "class", "params": {}, "gap": 0.5, "trials": n, "failed": 0}))
    done = tune_all.publish_phase(a, tmp_path)
    folder = tuned_folder("fashion_mnist", "cnn_fast", "class")
    assert folder.is_relative_to(tmp_path / "home")
    assert done == [folder / "finetune.json"] and (folder / "finetune.json").is_file()
    assert not (folder / "salun.json").exists()  # still running


def test_bundle_writes_finished_studies_with_their_test_gaps_and_a_shipped_best_reads_the_shipped_row(
        tmp_path, monkeypatch):
    from mixunlearn import tune

    monkeypatch.setattr(tune_all, "DATASET", "digits")
    monkeypatch.setattr(tune_all, "RECIPE", "laf_cnn_fast")
    monkeypatch.setattr(tune, "BUNDLED_DIR", tmp_path / "bundle")
    doc = {"dataset": "digits", "recipe": "laf_cnn_fast", "level": "class", "forget": "class:0", "failed": 0,
           "stopped_over_cap": 0}
    studies = {"finetune": ({"lr": 0.02}, False, 20), "salun": ({}, True, 20), "neggrad": ({"lr": 1e-4}, False, 5)}
    for method, (params, shipped, n) in studies.items():
        d = tune_all.study_dir(tmp_path, "class:0", method)
        d.mkdir(parents=True)
        (d / "best.json").write_text(json.dumps({**doc, "method": method, "params": params, "trials": n,
                                                 "best_is_shipped": shipped}))
    base = tmp_path / "tables" / tune_all.folder("class:0")
    for part, rows in (("shipped", {"finetune": 0.9, "salun": 0.6, "neggrad": 4.0}), ("tuned", {"finetune": 0.4})):
        (base / part).mkdir(parents=True)
        (base / part / "table.csv").write_text("method,gap_to_retrain\n" + "".join(
            f"{m},{g}\n" for m, g in rows.items()))
    a = args(settings=["class:0"], methods=list(studies), seeds=[0, 1, 2])
    [path] = tune_all.bundle_phase(a, tmp_path)
    found = tune.bundled("digits", "laf_cnn_fast", "class")
    assert path == tune.bundled_file("digits", "laf_cnn_fast", "class") and set(found) == {"finetune", "salun"}
    assert found["finetune"]["test"] == {"seeds": [0, 1, 2], "shipped_gap": 0.9, "tuned_gap": 0.4, "floor": None}
    assert found["salun"]["test"]["tuned_gap"] == found["salun"]["test"]["shipped_gap"] == 0.6  # not benched twice
    # two settings of one level would share a file: refused
    with pytest.raises(SystemExit, match="both class-level"):
        tune_all.bundle_phase(args(settings=["class:0", "class:3"], methods=["finetune"], seeds=[0]), tmp_path)
