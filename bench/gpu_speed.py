"""ResNet-18 speed check: MixUnlearn vs Fine-tune on CIFAR-shaped synthetic data, same run.

A freshly built ResNet-18 (CIFAR stem) plays the original model; the data are ``--n`` random
3x32x32 images with random labels in 10 classes, class 0 forgotten. Each method runs with the
ResNet family defaults (MixUnlearn: batch 32 forget + 32 retain, generator every 4 steps, bf16
autocast on CUDA; Fine-tune: batch 256, fp32) until ``--warmup + --steps`` optimisation steps,
then is stopped from an optimiser step hook. Steps/s are measured over f_U's optimiser steps after
the warm-up (with device syncs); peak memory is
``torch.cuda.max_memory_allocated`` per method on CUDA (not available on the CPU).

    python bench/gpu_speed.py --device cuda --steps 200            # on a GPU
    python bench/gpu_speed.py --device cpu --steps 3 --n 64 --warmup 1   # the CPU smoke path
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # threads sleep, not spin, on a shared machine

import torch  # noqa: E402
from torch.optim.optimizer import register_optimizer_step_post_hook  # noqa: E402

from mixunlearn.data import UnlearnData, parse_forget_spec  # noqa: E402
from mixunlearn.datasets import get_info  # noqa: E402
from mixunlearn.methods import get_method, make_config  # noqa: E402
from mixunlearn.models import build_model  # noqa: E402
from mixunlearn.progress import RunCancelled  # noqa: E402
from mixunlearn.utils import device_name, resolve_device, synchronize  # noqa: E402


def synthetic_task(n: int, device: torch.device, seed: int = 0) -> UnlearnData:
    info = get_info("cifar10")
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 32, 32, generator=g)
    y = torch.arange(n) % 10  # every class present, class 0 = 10% of the data
    y = y[torch.randperm(n, generator=g)]
    forget = torch.nonzero(y == 0).flatten()
    retain = torch.nonzero(y != 0).flatten()
    xt = torch.rand(max(10, n // 5), 3, 32, 32, generator=g)
    yt = torch.arange(len(xt)) % 10
    return UnlearnData(info=info, spec=parse_forget_spec("class:0"), seed=seed, x_train=x, y_train=y, y_clean=y,
                       forget_idx=forget, retain_idx=retain, x_test=xt, y_test=yt).to(device)


class StepTimer:
    """A global optimiser post-step hook: counts the steps of the optimiser that owns the unlearned
    model's first parameter (f_U's, not MixUnlearn's generator optimiser), times them with device
    syncs after the warm-up, and cancels the run after ``stop_at`` steps."""

    def __init__(self, model: torch.nn.Module, device: torch.device, warmup: int, stop_at: int):
        self.first_param = next(model.parameters())
        self.device, self.warmup, self.stop_at = device, warmup, stop_at
        self.count = 0
        self.first: tuple[int, float] | None = None
        self.last: tuple[int, float] | None = None

    def __call__(self, opt, args, kwargs) -> None:
        if not any(p is self.first_param for g in opt.param_groups for p in g["params"]):
            return
        self.count += 1
        if self.count < self.warmup:
            return
        synchronize(self.device)
        now = time.perf_counter()
        if self.first is None:
            self.first = (self.count, now)
        else:
            self.last = (self.count, now)
        if self.count >= self.stop_at:
            raise RunCancelled("step budget reached")

    def steps_per_second(self) -> float | None:
        if self.first is None or self.last is None or self.last[1] <= self.first[1]:
            return None
        return (self.last[0] - self.first[0]) / (self.last[1] - self.first[1])


def run_one(name: str, data: UnlearnData, device: torch.device, steps: int, warmup: int, amp: bool) -> dict:
    spec = get_method(name)
    cfg = make_config(name, "resnet")
    n_src = len(data.forget_idx) if name.startswith("mixunlearn") else len(data.retain_idx)
    batch = min(cfg.batch_size, n_src)  # the batch actually used (tiny smoke runs have fewer images)
    per_epoch = max(1, -(-n_src // batch))
    # Enough epochs for the step budget (built directly: the budget may exceed the widget range).
    cfg = dataclasses.replace(cfg, epochs=max(cfg.epochs, -(-(steps + warmup + 2) // per_epoch) + 1))
    if name.startswith("mixunlearn"):
        cfg = dataclasses.replace(cfg, amp=amp)
    torch.manual_seed(0)
    model = build_model("resnet18", data.info, seed=0).to(device)
    timer = StepTimer(model, device, max(1, warmup), max(1, warmup) + steps)
    handle = register_optimizer_step_post_hook(timer)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    synchronize(device)
    start = time.perf_counter()
    try:
        spec.fn(model, data if spec.labels == "aware" else data.without_labels(), cfg, device=device, callbacks=[])
    except RunCancelled:
        pass
    finally:
        handle.remove()
    synchronize(device)
    wall = time.perf_counter() - start
    sps = timer.steps_per_second()
    # Images through f_U per step: MixUnlearn 3N (mixes + real retain + real forget), Fine-tune N.
    imgs = 3 * batch if name.startswith("mixunlearn") else batch
    return {
        "method": name, "batch_size": batch, "steps_timed": (timer.last[0] - timer.first[0]) if sps else 0,
        "steps_per_s": sps, "unlearner_images_per_s": sps * imgs if sps else None, "wall_s": wall,
        "peak_mem_mib": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
        "amp": bool(amp and device.type == "cuda" and name.startswith("mixunlearn")),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--steps", type=int, default=200, help="timed optimisation steps per method")
    p.add_argument("--warmup", type=int, default=20, help="untimed steps first")
    p.add_argument("--n", type=int, default=2000, help="synthetic training images (10%% forgotten)")
    p.add_argument("--no-amp", action="store_true", help="MixUnlearn in float32 on CUDA too")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: leave torch's default)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    data = synthetic_task(args.n, device)
    rows = [run_one(m, data, device, args.steps, args.warmup, not args.no_amp) for m in ("mixunlearn", "finetune")]
    mix, ft = rows
    ratio = lambda a, b: (a / b) if a and b else None  # noqa: E731
    summary = {
        "device": device_name(device), "torch": torch.__version__, "n": args.n, "steps": args.steps,
        "warmup": args.warmup, "rows": rows,
        "ratio_steps_per_s_mixunlearn_over_finetune": ratio(mix["steps_per_s"], ft["steps_per_s"]),
        "ratio_peak_mem_mixunlearn_over_finetune": ratio(mix["peak_mem_mib"], ft["peak_mem_mib"]),
    }
    fmt = lambda v, f="{:.2f}": "n/a" if v is None else f.format(v)  # noqa: E731
    print(f"ResNet-18, synthetic 3x32x32, n={args.n}, {summary['device']}, torch {torch.__version__}")
    print("| method | batch | steps/s | unlearner images/s | peak memory (MiB) | bf16 autocast |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['batch_size']} | {fmt(r['steps_per_s'])} | "
              f"{fmt(r['unlearner_images_per_s'], '{:.0f}')} | {fmt(r['peak_mem_mib'], '{:.0f}')} | {r['amp']} |")
    print(f"MixUnlearn / Fine-tune: steps/s x{fmt(summary['ratio_steps_per_s_mixunlearn_over_finetune'])}, "
          f"peak memory x{fmt(summary['ratio_peak_mem_mixunlearn_over_finetune'])}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
