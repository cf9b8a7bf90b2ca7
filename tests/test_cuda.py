"""CUDA-only checks, skipped on machines without a GPU (CI has none; they ran on a lent GPU with
``bash bench/device_check.sh``). Together with ``test_every_method_smoke_cuda`` (test_registry.py)
and ``test_batching_with_cuda_generators`` (test_data.py) they are the CUDA path's tests."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

from mixunlearn.methods import make_config, run_method
from mixunlearn.methods.mixunlearn import MixUnlearnTrainer
from mixunlearn.metrics import evaluate
from mixunlearn.training import ModelCache, get_recipe, get_trained
from mixunlearn.utils import count_cuda_syncs

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize("name", ["mixunlearn", "mixunlearn_agnostic"])
def test_mixunlearn_forgets_and_keeps_on_cuda(name, digits_class3):
    """The digits acceptance numbers of the CPU bench hold on the GPU (bf16 autocast on)."""
    data, original, _ = digits_class3
    res = run_method(name, original, data, make_config(name, "digits"), device="cuda")
    m = evaluate(res.model, data.to("cuda"), attacks=False)
    assert res.config["amp"] is True
    assert m["test_f"] <= 1.0 and m["test_r"] >= 95.0, m


def test_mixunlearn_autocast_keeps_mixblock_in_float32(digits_class3):
    data, original, _ = digits_class3
    d = data.to("cuda")
    cfg = make_config("mixunlearn", "digits", {"epochs": 1})
    tr = MixUnlearnTrainer(copy.deepcopy(original).cuda(), d, cfg)
    b = tr.make_batch(d.forget_idx[:8], d.retain_idx[:8], augment=False)
    out = tr.unlearner_step(b, tr.lam_mix[0])
    assert out["mask"].dtype == torch.float32 and out["a"].dtype == torch.float32
    with tr.autocast():
        assert tr.f_u(b.x_f).dtype == torch.bfloat16
    assert all(torch.isfinite(p).all() for p in tr.f_u.parameters())


def test_mixunlearn_steps_stay_on_the_device(digits_class3):
    """No host round-trip per step: over a run, the CUDA syncs come from the progress reports
    (one per ``log_every`` steps) and the run's start and end, not from the steps themselves."""
    data, original, _ = digits_class3
    d = data.to("cuda")
    cfg = make_config("mixunlearn", "digits", {"epochs": 60, "snapshot_every": 1000})
    tr = MixUnlearnTrainer(copy.deepcopy(original).cuda(), d, cfg)
    tr.loop.reporter.log_every = 10
    # Warm-up step outside the count (lazy CUDA initialisation of kernels and the allocator).
    b = tr.make_batch(d.forget_idx[:8], d.retain_idx[:8], augment=False)
    tr.generator_step(b, tr.lam_gen[0])
    tr.unlearner_step(b, tr.lam_mix[0])
    with count_cuda_syncs() as syncs:
        tr.run()
    steps = tr.total
    assert steps >= 250
    # ~1 per report (steps / 10), 2 snapshots' copies, the weight check and the batching's
    # per-epoch index uploads; a per-step sync would give >= 1 per step.
    assert syncs.count <= 0.5 * steps, (syncs.count, steps, syncs.sites()[:5])


def test_model_trained_on_cuda_loads_on_cpu(digits_dataset, tmp_path):
    """A cached model trained on the GPU is a plain safetensors file that loads on the CPU."""
    from mixunlearn.data import make_split

    data = make_split(digits_dataset, "class:1", seed=3)
    cache = ModelCache(tmp_path / "cache")
    recipe = get_recipe("digits")
    gpu = get_trained("original", data.to("cuda"), "digits_cnn", recipe, cache=cache)
    assert next(gpu.model.parameters()).device.type == "cuda"
    cpu = get_trained("original", data, "digits_cnn", recipe, cache=cache)
    assert cpu.cached and next(cpu.model.parameters()).device.type == "cpu"
    for k, v in cpu.model.state_dict().items():
        assert torch.equal(v, gpu.model.state_dict()[k].cpu())
    assert evaluate(cpu.model, data, attacks=False)["test"] >= 95.0


def test_count_cuda_syncs_sees_a_sync():
    x = torch.ones(4, device="cuda")
    with count_cuda_syncs() as syncs:
        float(x.sum())
    assert syncs.count >= 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the mode is restored: no warning outside the block
        float(x.sum())


def test_a_generator_snapshot_waits_for_the_gpu_once(digits_class3):
    """Snapshots go to the host with one stream sync each, not one per tensor (the digits
    defaults take one at every generator update)."""
    data, original, _ = digits_class3
    d = data.to("cuda")
    tr = MixUnlearnTrainer(copy.deepcopy(original).cuda(), d, make_config("mixunlearn", "digits", {"epochs": 1}))
    first = tr.snapshot(0)  # builds and uploads the probe pairs
    with count_cuda_syncs() as syncs:
        snaps = [tr.snapshot(t) for t in (1, 2, 3)]
    assert syncs.count <= 3, syncs.sites()
    for s in snaps:
        assert s["mask"].device.type == "cpu" and torch.allclose(s["mask"], first["mask"])
        assert torch.isfinite(s["mixed"]).all() and s["pred"].dtype == torch.int64
