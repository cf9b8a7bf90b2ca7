"""Bring your own method, data and model (docs/plugins.md; docs/hardening.md, "Bring your own"):
plugin files and entry points, image folders and npz files, starting from the user's weights, and
every bad input of those as one line before any work (or one failed method, the others going on).

Lean: digits-sized data, a one-epoch recipe registered for the test, no attacks except where the
metrics must match exactly."""

from __future__ import annotations

import json
import os
import re
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mixunlearn import experiment, plugins, training
from mixunlearn.cli import main
from mixunlearn.datasets import CorruptDataError, get_info, load_dataset
from mixunlearn.methods import base as registry
from mixunlearn.training import Recipe

ROOT = Path(__file__).resolve().parents[1]
TINY = Recipe("tiny", epochs=1, batch_size=64, lr=1e-3, description="one epoch, for tests")


# --------------------------------------------------------------------------- helpers (also used by the app tests)


def doc_example() -> str:
    """The plugin of docs/plugins.md, as the page shows it."""
    text = (ROOT / "docs" / "plugins.md").read_text()
    at = text.index("<!-- example: my_plugin.py")
    return re.search(r"```python\n(.*?)```", text[at:], re.S).group(1)


def write_digit_folder(root: Path, classes=(0, 1, 2), per_class: int = 40, names=("zero", "one", "two"),
                       split: bool = False, rgb_sizes: bool = False) -> Path:
    """scikit-learn's digits as PNG files, one folder per class (``split``: train/ and test/)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    for c, name in zip(classes, names):
        imgs = d.images[d.target == c][:per_class]
        for i, img in enumerate(imgs):
            sub = root / (("test" if i % 5 == 0 else "train") if split else "") / name
            sub.mkdir(parents=True, exist_ok=True)
            im = Image.fromarray((img * 255 / 16).astype(np.uint8), "L")
            if rgb_sizes:  # colour, and a different size per image
                im = im.convert("RGB").resize((8 + i % 7, 8 + i % 5))
            im.save(sub / f"{i:03d}.png")
    return root


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def clean_registry():
    """Methods and plugin files registered by a test are gone after it."""
    registry._ensure_loaded()
    methods, files = dict(registry._REGISTRY), dict(plugins._FILES)
    mods = set(sys.modules)
    yield
    registry._REGISTRY.clear()
    registry._REGISTRY.update(methods)
    plugins._FILES.clear()
    plugins._FILES.update(files)
    for m in set(sys.modules) - mods:
        if m.startswith(plugins.MODULE_PREFIX):
            del sys.modules[m]


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setitem(training.RECIPES, "tiny", TINY)
    return "tiny"


def cli(args, capsys):
    try:
        rc = main([str(a) for a in args])
    except SystemExit as exc:
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err


def one_line(rc, err, expected_rc=2) -> str:
    assert rc == expected_rc, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mixunlearn") and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def no_work(monkeypatch):
    """Any training or experiment fails the test: bad input must be refused before."""
    def boom(*a, **k):
        raise AssertionError("work started before the bad input was refused")

    monkeypatch.setattr(experiment, "run_experiment", boom)
    monkeypatch.setattr(training, "train_supervised", boom)


# --------------------------------------------------------------------------- plugins


BAD_PLUGIN = '''
    from dataclasses import dataclass

    import torch

    from mixunlearn.methods import MethodConfig, param, register_method


    @dataclass(frozen=True)
    class NoopConfig(MethodConfig):
        steps: int = param(1, "unused", min=1, max=10)


    def _reg(name):
        return register_method(name, config=NoopConfig, labels="aware", summary=name, paper="test")


    @_reg("noop")
    def noop(model, data, cfg, *, device, callbacks):
        return model


    @_reg("raises")
    def raises(model, data, cfg, *, device, callbacks):
        raise RuntimeError("my bug")


    @_reg("wrong_type")
    def wrong_type(model, data, cfg, *, device, callbacks):
        return {"model": model}


    @_reg("nan_model")
    def nan_model(model, data, cfg, *, device, callbacks):
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(float("nan"))
        return model


    @_reg("other_shape")
    def other_shape(model, data, cfg, *, device, callbacks):
        model.head = torch.nn.Linear(model.head.in_features, 3)
        return model
'''


def test_a_plugin_written_against_the_doc_runs_in_the_cli(tmp_path, capsys, clean_registry, tiny):
    """The doc's example next to a no-op plugin method and four broken ones, in one run (with the
    attacks): the no-op gets exactly the original's metrics, the doc's method runs like a built-in
    one, each broken one is recorded failed with one line naming its file."""
    mine = tmp_path / "my_plugin.py"
    mine.write_text(doc_example())
    bad = write(tmp_path / "bad_plugin.py", BAD_PLUGIN)
    rc, out, err = cli(["list", "--plugin", mine], capsys)
    assert rc == 0 and re.search(r"my_method\s+\(aware\) re-fit the classifier head", out), err
    out_dir = tmp_path / "o"
    methods = "retrain,my_method,noop,raises,wrong_type,nan_model,other_shape"
    rc, out, err = cli(["run", "--plugin", mine, "--plugin", bad, "--methods", methods, "--recipe", "tiny",
                        "--param", "my_method.steps=3", "--quiet", "--store", "--out", out_dir], capsys)
    assert rc == 0, err
    doc = json.loads((out_dir / "results.json").read_text())
    assert doc["config"]["plugins"] == [str(mine.resolve()), str(bad.resolve())]
    m = doc["methods"]
    assert m["my_method"]["status"] == "done" and m["my_method"]["config"]["steps"] == 3
    assert m["noop"]["status"] == "done" and m["noop"]["metrics"] == doc["original"]["metrics"]
    assert m["noop"]["metrics"]["asr"] is not None  # the attack ran, and matched too
    expected = {"raises": "raised RuntimeError: my bug", "wrong_type": "returned dict, not a torch model",
                "nan_model": "NaN or infinite weights", "other_shape": "tensor head.weight is (3, 128)"}
    for name, what in expected.items():
        assert m[name]["status"] == "failed" and m[name]["metrics"] == {}, name
        error = m[name]["error"]
        assert "\n" not in error and f"plugin {bad.resolve()}" in error and what in error, error
    from mixunlearn.store import RunStore

    runs = RunStore().list_runs()
    assert len(runs) == 1 and runs[0].config["plugins"] == doc["config"]["plugins"]


@pytest.mark.parametrize("command", ["list", "run", "bench", "evaluate"])
def test_a_plugin_whose_import_raises_is_exit_2_naming_the_file(command, tmp_path, capsys, clean_registry,
                                                                 no_work):
    bad = write(tmp_path / "broken.py", "x = 1\nraise ImportError('needs a GPU library')\n")
    args = [command, "--plugin", bad] + ([] if command == "list" else ["--out", tmp_path / "o"])
    line = one_line(*cli(args, capsys)[::2])
    assert f"plugin {bad} failed to import (line 2): ImportError: needs a GPU library" in line
    assert "broken" not in " ".join(registry._REGISTRY)
    missing = one_line(*cli([command, "--plugin", tmp_path / "nope.py"], capsys)[::2])
    assert "nope.py: no such file" in missing


def test_a_plugin_import_error_in_a_real_process(tmp_path):
    from test_cli import run_cli

    bad = write(tmp_path / "syntax.py", "def f(:\n    pass\n")
    res = run_cli(["run", "--plugin", str(bad), "--methods", "retrain"])
    assert res.returncode == 2 and res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0] and "SyntaxError" in lines[0], res.stderr


def test_a_failed_import_registers_nothing_and_others_still_load(tmp_path, clean_registry, monkeypatch):
    home = Path(os.environ["MIXUNLEARN_HOME"])
    (home / "plugins").mkdir(parents=True)
    write(home / "plugins" / "a_good.py", doc_example())
    (home / "plugins" / "b_half.py").write_text(textwrap.dedent(BAD_PLUGIN) + "\nraise ValueError('half way')\n")
    (home / "plugins" / "notes.txt").write_text("not a plugin")
    infos = plugins.load_home_plugins()
    assert [Path(i.source).name for i in infos] == ["a_good.py", "b_half.py"]
    assert infos[0].ok and infos[0].methods == ["my_method"]
    assert not infos[1].ok and "b_half.py failed to import" in infos[1].error and "half way" in infos[1].error
    assert "noop" not in registry._REGISTRY and "my_method" in registry._REGISTRY  # nothing half-registered


def test_methods_of_an_installed_package_register_through_the_entry_point_group(tmp_path):
    """A fake distribution on sys.path: one good entry point (a module), one good function, one that
    fails; `list` shows both good methods and still works."""
    from test_cli import run_cli

    (tmp_path / "byo_pkg_methods.py").write_text(doc_example().replace('"my_method"', '"pkg_method"')
                                                 .replace('"Head tune"', '"Pkg"'))
    (tmp_path / "byo_pkg_setup.py").write_text(
        "def register():\n    import byo_pkg_methods2  # noqa\n")
    (tmp_path / "byo_pkg_methods2.py").write_text(doc_example().replace('"my_method"', '"pkg_method2"')
                                                  .replace('"Head tune"', '"Pkg2"'))
    dist = tmp_path / "byo_pkg-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: byo-pkg\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[mixunlearn.methods]\nmine = byo_pkg_methods\n"
                                           "fn = byo_pkg_setup:register\nbroken = byo_no_such_module\n")
    res = run_cli(["list"], env={"PYTHONPATH": f"{ROOT}{os.pathsep}{tmp_path}"})
    assert res.returncode == 0, res.stderr
    assert re.search(r"pkg_method\s+\(aware\)", res.stdout) and re.search(r"pkg_method2\s+\(aware\)", res.stdout)
    assert "finetune" in res.stdout


def test_plugin_methods_get_the_registry_smoke_tests(tmp_path, clean_registry, digits_class3):
    """The smoke test and the cancel test of tests/test_registry.py, on the doc's plugin method."""
    from test_registry import Events, _smoke

    from mixunlearn.methods import make_config, run_method
    from mixunlearn.progress import RunCancelled

    plugins.load_plugin_file(write(tmp_path / "my_plugin.py", doc_example()))
    data, original, _ = digits_class3
    _smoke("my_method", data, original)
    events = Events(cancel_after=1)
    with pytest.raises(RunCancelled):
        run_method("my_method", original, data, make_config("my_method"), device="cpu", callbacks=[events])
    assert len(events.events) == 1


# --------------------------------------------------------------------------- image folders and npz


def test_an_image_folder_runs_end_to_end_and_retrain_forgets_the_class(tmp_path, capsys):
    folder = write_digit_folder(tmp_path / "digits3")
    info = get_info(f"imagefolder:{folder}")
    assert (info.channels, info.size, info.n_classes, info.class_names) == (1, 28, 3, ("one", "two", "zero"))
    assert info.default_model == "cnn2"
    ds = load_dataset(f"imagefolder:{folder}")
    assert ds.x_train.shape[1:] == (1, 28, 28) and len(ds.x_test) == 3 * 8 and len(ds.x_train) == 3 * 32
    out = tmp_path / "o"
    rc, _, err = cli(["run", "--dataset", f"imagefolder:{folder}", "--forget", "class:2", "--methods",
                      "retrain,finetune", "--no-attacks", "--quiet", "--out", out], capsys)
    assert rc == 0, err
    doc = json.loads((out / "results.json").read_text())
    assert doc["config"]["model"] == "cnn2" and doc["config"]["recipe"] == "digits_fast"
    retrain, original = doc["methods"]["retrain"]["metrics"], doc["original"]["metrics"]
    assert retrain["test_f"] == 0.0 and retrain["test_r"] >= 80.0, retrain
    assert original["test_f"] >= 80.0, original
    assert doc["methods"]["finetune"]["status"] == "done"


def test_a_folder_with_train_and_test_colour_and_mixed_sizes(tmp_path):
    folder = write_digit_folder(tmp_path / "split", per_class=10, split=True, rgb_sizes=True)
    ds = load_dataset(f"imagefolder:{folder}")
    assert ds.info.channels == 3 and ds.x_train.shape[1:] == (3, 28, 28)
    assert (len(ds.x_train), len(ds.x_test)) == (24, 6)  # every fifth image in test/
    assert ds.x_train.min() >= 0 and ds.x_train.max() <= 1


def test_npz_arrays_load_without_pickles(tmp_path):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images * 255 / 16).astype(np.uint8)
    good = tmp_path / "d.npz"
    np.savez(good, x_train=x[:300], y_train=d.target[:300], x_test=x[300:400], y_test=d.target[300:400])
    ds = load_dataset(f"npz:{good}")
    assert ds.x_train.shape == (300, 1, 8, 8) and ds.info.default_model == "digits_cnn" and ds.info.n_classes == 10
    evil = tmp_path / "evil.npz"
    np.savez(evil, x_train=np.array([object()], dtype=object), y_train=d.target[:1], x_test=x[:1], y_test=d.target[:1])
    with pytest.raises(CorruptDataError, match="without pickles"):
        load_dataset(f"npz:{evil}")
    odd = tmp_path / "odd.npz"
    np.savez(odd, x_train=x[:10], y_train=d.target[:10])
    with pytest.raises(CorruptDataError, match="lacks x_test, y_test"):
        load_dataset(f"npz:{odd}")


def _one_class(root):
    write_digit_folder(root, classes=(0,), names=("zero",), per_class=5)


def _empty_class(root):
    write_digit_folder(root, per_class=5)
    (root / "three").mkdir()
    (root / "three" / "readme.txt").write_text("no images here")


def _unreadable(root):
    write_digit_folder(root, per_class=5)
    (root / "one" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")


def _symlink_loop(root):
    write_digit_folder(root, per_class=5)
    os.symlink(root, root / "one" / "again")


def _self_link(root):
    write_digit_folder(root, per_class=5)
    os.symlink(root / "two" / "loop.png", root / "two" / "loop.png")


def _one_image_class(root):
    write_digit_folder(root, per_class=5)
    write_digit_folder(root, classes=(3,), names=("three",), per_class=1)


def _train_test_differ(root):
    write_digit_folder(root, per_class=10, split=True)
    import shutil

    shutil.rmtree(root / "test" / "two")


BAD_FOLDERS = [
    (_one_class, "needs at least 2 class folders (found only 'zero')"),
    (_empty_class, "class folder {root}/three has no images"),
    (_unreadable, "image {root}/one/broken.png cannot be read"),
    (_symlink_loop, "symlink loop at {root}/one/again"),
    (_self_link, "symlink loop at {root}/two/loop.png"),
    (_one_image_class, "class 'three' has 1 image"),
    (_train_test_differ, "train/ and test/ must hold the same class folders (only in one: two)"),
    (None, "imagefolder:{root}: no such folder"),
]


@pytest.mark.parametrize("make,message", BAD_FOLDERS,
                         ids=["one class", "empty class", "unreadable image", "symlink loop", "self link",
                              "one image", "train test differ", "missing"])
def test_a_bad_image_folder_is_one_line_before_any_work(make, message, tmp_path, capsys, no_work):
    root = tmp_path / "data"
    if make:
        root.mkdir()
        make(root)
    line = one_line(*cli(["run", "--dataset", f"imagefolder:{root}", "--forget", "class:0",
                          "--out", tmp_path / "o"], capsys)[::2])
    assert message.format(root=root) in line, line
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- the user's weights


def test_weights_saved_by_the_project_reproduce_the_run_exactly(tmp_path, capsys, tiny):
    args = ["run", "--recipe", "tiny", "--methods", "retrain,finetune", "--param", "finetune.epochs=1", "--quiet"]
    rc, _, err = cli([*args, "--out", tmp_path / "a"], capsys)
    assert rc == 0, err
    first = json.loads((tmp_path / "a" / "results.json").read_text())
    saved = Path(os.environ["MIXUNLEARN_HOME"]) / "models" / f"{first['info']['cache']['original']}.safetensors"
    rc, _, err = cli([*args, "--original", saved, "--model", "digits_cnn", "--out", tmp_path / "b"], capsys)
    assert rc == 0, err
    second = json.loads((tmp_path / "b" / "results.json").read_text())
    assert second["config"]["original"] == str(saved) and len(second["config"]["original_sha256"]) == 64
    assert second["info"]["cache"]["original"].startswith("sha256:")
    assert second["original"]["metrics"] == first["original"]["metrics"]
    for name in ("retrain", "finetune"):
        assert second["methods"][name]["metrics"] == first["methods"][name]["metrics"], name
    # Retrain from a file too: the same weights give the same Retrain.
    retrained = Path(os.environ["MIXUNLEARN_HOME"]) / "models" / f"{first['info']['cache']['retrain']}.safetensors"
    rc, _, err = cli([*args, "--original", saved, "--retrained", retrained, "--out", tmp_path / "c"], capsys)
    third = json.loads((tmp_path / "c" / "results.json").read_text())
    assert rc == 0 and third["methods"]["retrain"]["metrics"] == first["methods"]["retrain"]["metrics"], err


def test_a_checkpoint_that_does_not_fit_is_one_line_naming_the_tensor(tmp_path, capsys, no_work):
    from safetensors.torch import save_file

    from mixunlearn.models import build_model

    state = {k: v.contiguous() for k, v in build_model("digits_cnn", get_info("digits"), seed=0).state_dict().items()}
    state["embed.1.weight"] = torch.zeros(128, 7)
    bad = tmp_path / "bad.safetensors"
    save_file(state, str(bad))
    line = one_line(*cli(["run", "--original", bad, "--out", tmp_path / "o"], capsys)[::2])
    assert "--original bad.safetensors does not fit model 'digits_cnn'" in line
    assert "tensor embed.1.weight has shape (128, 7), model expects (128, 256)" in line
    line = one_line(*cli(["run", "--original", tmp_path / "none.safetensors"], capsys)[::2])
    assert "none.safetensors: no such file" in line
    del state["embed.1.weight"]
    save_file(state, str(bad))
    line = one_line(*cli(["run", "--retrained", bad, "--out", tmp_path / "o"], capsys)[::2])
    assert "--retrained bad.safetensors" in line and "missing ['embed.1.weight']" in line


def test_a_config_with_plugins_and_weights_round_trips_as_a_ray_worker_reads_it(tmp_path, clean_registry):
    """What a Ray cell (or a replay) does: ExperimentConfig.from_dict(cfg.to_dict()).resolved() imports
    the plugin files again and checks the weights' hash; a config without them is unchanged."""
    from safetensors.torch import save_file

    from mixunlearn.experiment import ExperimentConfig
    from mixunlearn.models import build_model

    mine = write(tmp_path / "my_plugin.py", doc_example())
    weights = tmp_path / "w.safetensors"
    state = build_model("digits_cnn", get_info("digits"), seed=1).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(weights))
    cfg = ExperimentConfig(methods=("retrain", "my_method"), plugins=(str(mine),), original=str(weights)).resolved()
    registry._REGISTRY.pop("my_method")
    plugins._FILES.clear()  # as in a fresh worker process
    again = ExperimentConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))).resolved()
    assert again == cfg and "my_method" in registry._REGISTRY
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)  # the weights change after the run was set up
    with pytest.raises(ValueError, match="the file changed since this run was set up"):
        ExperimentConfig.from_dict(cfg.to_dict()).resolved()
    plain = ExperimentConfig().resolved().to_dict()
    assert not {"plugins", "original", "original_sha256", "retrained", "retrained_sha256"} & set(plain)


def test_tune_takes_plugins_and_its_task_carries_them_to_workers(tmp_path, capsys, clean_registry):
    """`tune --plugin`: a plugin's method is tunable (its search space comes from its config), the
    task a Ray worker receives names the plugin file, and a plugin whose import raises is exit 2."""
    from mixunlearn.tune import TuneTask

    good = write(tmp_path / "tunable.py", """
        from dataclasses import dataclass
        from mixunlearn.methods import MethodConfig, param, register_method

        @dataclass(frozen=True)
        class KeepConfig(MethodConfig):
            lr: float = param(0.01, "a learning rate", min=1e-4, max=1.0, log=True)

        @register_method("tunable_keep", config=KeepConfig, labels="aware", summary="keeps the model", paper="-")
        def keep(model, data, cfg, *, device, callbacks):
            return model
    """)
    task = TuneTask(dataset="digits", forget="class:0", method="tunable_keep", plugins=(str(good),)).resolved()
    assert task.plugins == (str(good.resolve()),) and [d.name for d in task.space()] == ["lr"]
    back = TuneTask.from_dict(json.loads(json.dumps(task.to_dict())))  # what a Ray worker reads
    assert back == task and back.experiment(0).plugins == (str(good.resolve()),)
    bad = write(tmp_path / "bad_tune.py", "raise ImportError('needs a GPU library')\n")
    rc, _, err = cli(["tune", "--method", "finetune", "--plugin", bad, "--trials", "1", "--out", tmp_path / "s"],
                     capsys)
    assert "bad_tune.py" in one_line(rc, err) and not (tmp_path / "s" / "study.db").exists()
