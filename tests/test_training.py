"""The original / Retrain cache (reuse, corrupt or foreign entries rebuilt and never executed),
safe checkpoint loading, the progress reporter's NaN checks, and the digits recipe's accuracy."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle

import pytest
import torch

from mixunlearn.data import make_split, parse_forget_spec
from mixunlearn.metrics import accuracy, predict_logits
from mixunlearn.models import build_model
from mixunlearn.progress import NonFiniteLossError, ProgressEvent, Reporter
from mixunlearn.training import ModelCache, Recipe, get_recipe, get_trained, load_checkpoint

TINY = Recipe("tiny", epochs=1, batch_size=64, lr=1e-3, description="one epoch, for tests")


@pytest.fixture(scope="module")
def small_task(digits_dataset):
    return make_split(digits_dataset, "class:3", seed=0).subset(240, 60, seed=0)


class Recorder:
    def __init__(self):
        self.events: list[ProgressEvent] = []

    def __call__(self, ev):
        self.events.append(ev)

    def phases(self, phase):
        return [e for e in self.events if e.phase == phase]


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


class _Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# --------------------------------------------------------------------------- cache


def test_second_get_trained_reuses_the_cache(tmp_path, small_task):
    cache = ModelCache(tmp_path / "c")
    rec1 = Recorder()
    first = get_trained("original", small_task, "digits_cnn", TINY, [rec1], cache)
    assert not first.cached and rec1.phases("train")  # it trained
    assert first.model.training is False
    rec2 = Recorder()
    second = get_trained("original", small_task, "digits_cnn", TINY, [rec2], cache)
    assert second.cached and second.key == first.key
    assert _same_weights(first.model, second.model)
    assert rec2.phases("train") == []  # no training events
    assert any("reusing cached original" in e.message for e in rec2.phases("cache"))
    assert second.seconds == pytest.approx(first.seconds)  # the recorded training time is kept
    # Retrain is another entry (it depends on the forget spec), the original is not.
    other_spec = dataclasses.replace(small_task, spec=parse_forget_spec("class:4"))
    assert get_trained("original", other_spec, "digits_cnn", TINY, None, cache).cached
    retrain = get_trained("retrain", small_task, "digits_cnn", TINY, None, cache)
    assert not retrain.cached and retrain.key != first.key


def _corrupt_truncate(w, m):
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])


def _corrupt_garbage(w, m):
    w.write_bytes(b"\x00" * 50)


def _sidecar_garbage(w, m):
    m.write_text("{not json at all")


def _sidecar_not_an_object(w, m):
    m.write_text("[1, 2, 3]")


def _sidecar_bad_seconds(w, m):
    m.write_text(json.dumps({"seconds": "soon"}))


def _other_architecture(w, m):
    from safetensors.torch import save_file

    other = build_model("cnn2", None, seed=0)
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(w))


def _other_class_count(w, m):
    from safetensors.torch import save_file

    other = build_model("digits_cnn", None, seed=0)
    other.head = torch.nn.Linear(128, 5)
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(w))


def _nan_weights(w, m):
    from safetensors.torch import load_file, save_file

    state = load_file(str(w))
    state["head.weight"][0, 0] = float("nan")
    save_file(state, str(w))


@pytest.mark.parametrize("damage", [_corrupt_truncate, _corrupt_garbage, _sidecar_garbage, _sidecar_not_an_object,
                                    _sidecar_bad_seconds, _other_architecture, _other_class_count, _nan_weights])
def test_unusable_cache_entry_is_reported_removed_and_rebuilt(tmp_path, small_task, damage):
    cache = ModelCache(tmp_path / "c")
    first = get_trained("original", small_task, "digits_cnn", TINY, None, cache)
    w, m = cache.paths(first.key)
    damage(w, m)
    rec = Recorder()
    again = get_trained("original", small_task, "digits_cnn", TINY, [rec], cache)
    problems = [e for e in rec.phases("cache") if "unusable" in e.message]
    assert len(problems) == 1 and "rebuilt" in problems[0].message
    assert not again.cached and rec.phases("train")  # rebuilt by training again
    assert _same_weights(again.model, first.model)  # same seed and recipe: the same model
    # The rebuilt entry is valid and reused next time.
    assert get_trained("original", small_task, "digits_cnn", TINY, None, cache).cached


def test_pickle_in_the_cache_is_never_executed(tmp_path, small_task):
    cache = ModelCache(tmp_path / "c")
    first = get_trained("original", small_task, "digits_cnn", TINY, None, cache)
    w, _ = cache.paths(first.key)
    marker = tmp_path / "pwned"
    w.write_bytes(pickle.dumps({"x": _Evil(marker)}))
    rec = Recorder()
    again = get_trained("original", small_task, "digits_cnn", TINY, [rec], cache)
    assert not again.cached and not marker.exists()
    assert any("unusable" in e.message for e in rec.phases("cache"))


def test_use_cache_false_neither_reads_nor_writes(tmp_path, small_task):
    cache = ModelCache(tmp_path / "c")
    res = get_trained("original", small_task, "digits_cnn", TINY, None, cache, use_cache=False)
    assert not res.cached and list((tmp_path / "c").iterdir()) == []


def test_get_trained_rejects_bad_input(tmp_path, small_task):
    with pytest.raises(ValueError, match="original' or 'retrain"):
        get_trained("teacher", small_task, "digits_cnn", TINY, None, ModelCache(tmp_path))
    with pytest.raises(ValueError, match="needs labels"):
        get_trained("original", small_task.without_labels(), "digits_cnn", TINY, None, ModelCache(tmp_path))


def test_recipes():
    # "digits" by name is the digits tables' recipe; a dataset name alone gives its fast default.
    assert get_recipe("digits").name == "digits" and get_recipe("fashion_mnist").name == "cnn_fast"
    r = get_recipe("digits")
    assert (r.optimizer, r.lr, r.epochs, r.batch_size) == ("adam", 1e-3, 40, 64)  # EVALUATION.md §6
    laf = get_recipe("laf_cnn")
    assert (laf.optimizer, laf.lr, laf.weight_decay, laf.epochs, laf.batch_size) == ("adam", 1e-4, 1e-4, 20, 32)
    with pytest.raises(ValueError, match="known: digits"):
        get_recipe("imagenet")


# --------------------------------------------------------------------------- checkpoints


def test_load_checkpoint_refuses_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"weight": _Evil(marker)}, path)
    model = build_model("digits_cnn", None, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="cannot be loaded safely"):
        load_checkpoint(path, model)
    assert not marker.exists()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_load_checkpoint_plain_state_dicts(tmp_path):
    src = build_model("digits_cnn", None, seed=1)
    torch.save(src.state_dict(), tmp_path / "plain.pt")
    dst = load_checkpoint(tmp_path / "plain.pt", build_model("digits_cnn", None, seed=2))
    assert _same_weights(src, dst)
    # A training checkpoint: weights under "state_dict" next to non-tensor entries.
    torch.save({"state_dict": src.state_dict(), "epoch": 7, "note": "x"}, tmp_path / "wrapped.pth")
    assert _same_weights(src, load_checkpoint(tmp_path / "wrapped.pth", build_model("digits_cnn", None, seed=2)))
    # Saved from nn.DataParallel: every key starts with "module.".
    torch.save({f"module.{k}": v for k, v in src.state_dict().items()}, tmp_path / "dp.pt")
    assert _same_weights(src, load_checkpoint(tmp_path / "dp.pt", build_model("digits_cnn", None, seed=2)))
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(tmp_path / "w.safetensors"))
    assert _same_weights(src, load_checkpoint(tmp_path / "w.safetensors", build_model("digits_cnn", None, seed=2)))


def test_load_checkpoint_rejects_foreign_content(tmp_path):
    src = build_model("digits_cnn", None, seed=1)
    model = build_model("digits_cnn", None, seed=2)
    torch.save({**src.state_dict(), "epoch": 3}, tmp_path / "mixed.pt")
    with pytest.raises(ValueError, match="non-tensor entries: epoch"):
        load_checkpoint(tmp_path / "mixed.pt", model)
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="not a dictionary"):
        load_checkpoint(tmp_path / "list.pt", model)
    torch.save(build_model("cnn2", None, seed=0).state_dict(), tmp_path / "cnn2.pt")
    with pytest.raises(ValueError, match="another architecture"):
        load_checkpoint(tmp_path / "cnn2.pt", model)
    five = build_model("digits_cnn", None, seed=0)
    five.head = torch.nn.Linear(128, 5)
    torch.save(five.state_dict(), tmp_path / "five.pt")
    with pytest.raises(ValueError, match="number of classes"):
        load_checkpoint(tmp_path / "five.pt", model)
    (tmp_path / "junk.pt").write_bytes(b"\x80\x02junk")
    with pytest.raises(ValueError, match="cannot be loaded safely"):
        load_checkpoint(tmp_path / "junk.pt", model)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt", model)
    state = src.state_dict()
    state["head.bias"][0] = float("inf")
    torch.save(state, tmp_path / "inf.pt")
    with pytest.raises(ValueError, match="NaN or inf"):
        load_checkpoint(tmp_path / "inf.pt", model)
    assert _same_weights(model, build_model("digits_cnn", None, seed=2))  # never partly loaded


# --------------------------------------------------------------------------- progress reporter


def test_reporter_emits_every_log_every_and_at_the_end():
    rec = Recorder()
    rep = Reporter("m", [rec], total=25, log_every=10)
    for i in range(25):
        rep.step({"loss": torch.tensor(float(i))})
    steps = [e.step for e in rec.events]
    assert steps == [10, 20, 25]
    assert rec.events[0].losses["loss"] == pytest.approx(4.5)  # mean of steps 0..9
    assert rec.events[-1].losses["loss"] == pytest.approx(22.0)
    assert [h["step"] for h in rep.history] == [10, 20, 25]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), torch.tensor([1.0, float("nan")])])
def test_reporter_turns_non_finite_losses_into_an_error(bad):
    rep = Reporter("m", [], total=100, log_every=5)
    rep.step({"ok": 1.0, "bad": 2.0})
    rep.step({"ok": 1.0, "bad": bad})
    rep.step({"ok": 1.0, "bad": 3.0})  # a later finite value must not hide the earlier NaN
    with pytest.raises(NonFiniteLossError) as err:
        rep.flush()
    assert "loss bad" in str(err.value) and "step 3" in str(err.value) and err.value.method == "m"


def test_reporter_nan_is_caught_by_the_periodic_flush():
    rep = Reporter("m", [], total=100, log_every=4)
    rep.step({"l": 1.0})
    rep.step({"l": float("nan")})
    rep.step({"l": 1.0})
    with pytest.raises(NonFiniteLossError):
        rep.step({"l": 1.0})  # step 4: flush


# --------------------------------------------------------------------------- recipe quality


def test_digits_recipe_reaches_97_percent(digits_class3):
    data, original, retrain = digits_class3
    acc = accuracy(predict_logits(original, data.x_test), data.y_test)
    assert acc >= 97.0
    mask = data.test_forget_mask()
    assert accuracy(predict_logits(retrain, data.x_test[mask]), data.y_test[mask]) == 0.0
    assert accuracy(predict_logits(retrain, data.x_test[~mask]), data.y_test[~mask]) >= 95.0


def test_timed_regions_start_after_torchs_lazy_imports():
    """The first optimizer of a process imports torch._dynamo (1-2 s); every timed region starts with
    ``synchronize``, which must pay that first, so no method's or model's seconds include it."""
    import subprocess
    import sys
    code = (
        "import sys, torch\n"
        "from mixunlearn.utils import synchronize\n"
        "synchronize('cpu')\n"
        "before = set(sys.modules)\n"
        "torch.optim.Adam([torch.zeros(1, requires_grad=True)])\n"
        "torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1, momentum=0.9)\n"
        "new = sorted(set(sys.modules) - before)\n"
        "print(len(new), new[:5])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.stdout.startswith("0 "), out.stdout
