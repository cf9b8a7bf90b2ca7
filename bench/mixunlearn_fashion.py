"""MixUnlearn on Fashion-MNIST (the paper's 2-conv CNN and LAF's recipe), test split, next to the
paper's reported rows (Tables 1-2, from the package's copy ``mixunlearn/resources/paper_tables.json``).

Settings: ``class:0`` and ``data:5-9:0.4``, seeds 0,1,2 by default. Original and Retrain come from
the default model cache (filled by ``bench/pretrain.py``); a (spec, seed) whose models are not
cached yet is skipped and listed, unless ``--allow-train``. For each level the table gives mean ±
std of the protocol's metrics for Retrain and both MixUnlearn modes, the gap to our Retrain (from
the means, EVALUATION.md §2.3), the paper's row, the paper's own gap, and the gap between our row
and the paper's row (mean absolute difference over the same metrics).

    python bench/mixunlearn_fashion.py --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # threads sleep, not spin, on a shared machine

import numpy as np  # noqa: E402
import torch  # noqa: E402

from mixunlearn.methods import run_method  # noqa: E402
from mixunlearn.methods.mixunlearn import generator_movement  # noqa: E402
from mixunlearn.metrics import evaluate, gap_to_retrain, metric_set  # noqa: E402
from mixunlearn.paper import paper_rows  # noqa: E402
from mixunlearn.utils import device_name, resolve_device  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tune_mixunlearn import load_setting  # noqa: E402

MODES = ("mixunlearn", "mixunlearn_agnostic")
LABEL = {"retrain": "Retrain", "original": "Original", "mixunlearn": "MixUnlearn (aware)",
         "mixunlearn_agnostic": "MixUnlearn (agnostic)"}


def collect(specs: list[str], seeds: list[int], out: Path, device, allow_train: bool) -> tuple[list[dict], list]:
    log = out / "runs.jsonl"
    rows = [json.loads(x) for x in log.read_text().splitlines() if x.strip()] if log.exists() else []
    done = {(r["spec"], r["seed"], r["method"]) for r in rows}
    skipped = []
    for spec in specs:
        for seed in seeds:
            want = ("original", "retrain") + MODES
            if all((spec, seed, m) in done for m in want):
                continue
            try:
                data, original, retrain = load_setting("fashion_mnist", spec, seed, device, allow_train,
                                                       eval_split="test")
            except SystemExit as exc:
                skipped.append((spec, seed, str(exc)))
                print(f"skipped {spec} seed {seed}: {exc}", flush=True)
                continue
            secs = data.meta["train_seconds"]
            new = []
            for name, model in (("original", original), ("retrain", retrain)):
                if (spec, seed, name) not in done:
                    new.append({"spec": spec, "seed": seed, "method": name, "metrics": evaluate(model, data, seed),
                                "seconds": secs[name]})
            for mode in MODES:
                if (spec, seed, mode) in done:
                    continue
                t0 = time.time()
                res = run_method(mode, original, data, device=device)
                new.append({"spec": spec, "seed": seed, "method": mode, "metrics": evaluate(res.model, data, seed),
                            "seconds": res.seconds, "config": res.config,
                            "retrain_train_seconds": secs["retrain"], "generator": generator_movement(res.extras)})
                print(f"{spec} seed {seed} {mode}: {({k: round(v, 2) for k, v in new[-1]['metrics'].items()})} "
                      f"({time.time() - t0:.0f}s)", flush=True)
            with log.open("a") as fh:
                for r in new:
                    fh.write(json.dumps(r) + "\n")
            rows += new
    return rows, skipped


def table(rows: list[dict], spec: str, seeds: list[int]) -> str:
    level = "class" if spec.startswith("class") else "data"
    keys = metric_set(level)
    rs = [r for r in rows if r["spec"] == spec and r["seed"] in seeds]
    if not rs:
        return f"(no {spec} run yet)"
    covered = sorted({r["seed"] for r in rs})
    paper = {r.key: r for r in paper_rows("fashion_mnist", level)}
    per = lambda m: [r for r in rs if r["method"] == m]  # noqa: E731
    ret = {k: float(np.mean([r["metrics"][k] for r in per("retrain")])) for k in keys}
    names = [k.replace("_", "").replace("test", "Test").replace("train", "Train") for k in keys]
    head = ("| row | " + " | ".join(f"{k}" for k in keys) + " | gap to our Retrain | seconds (× Retrain) | paper: "
            + " / ".join(names) + " | paper's gap | abs(ours − paper) |")
    lines = [f"**Fashion-MNIST {spec}, seeds {','.join(map(str, covered))} (of {','.join(map(str, seeds))})**", "",
             head, "|---|" + "---|" * (len(keys) + 5)]
    for m in ("retrain",) + MODES + ("original",):
        recs = per(m)
        if not recs:
            continue
        vals = {k: [r["metrics"][k] for r in recs] for k in keys}
        means = {k: float(np.mean(v)) for k, v in vals.items()}
        sd = lambda v: float(np.std(v, ddof=1)) if len(v) > 1 else 0.0  # noqa: E731
        gap = gap_to_retrain(means, ret, level)
        if m in MODES:
            ratio = np.mean([r["seconds"] / r["retrain_train_seconds"] for r in recs])
            secs = f"{np.mean([r['seconds'] for r in recs]):.1f} ({ratio:.3f})"
        elif m == "retrain":
            secs = f"{np.mean([r['seconds'] for r in recs]):.0f} (1)"
        else:
            secs = "–"
        pr = paper.get(m)
        if pr:
            ptxt = " / ".join(f"{pr.metrics[k][0]:.2f}" for k in keys)
            pgap = f"{pr.gap:.2f}" if pr.gap is not None else "–"
            vs = f"{np.mean([abs(means[k] - pr.metrics[k][0]) for k in keys]):.2f}"
        else:
            ptxt, pgap, vs = "–", "–", "–"
        lines.append(f"| {LABEL[m]} ({len(recs)} seeds) | " + " | ".join(f"{means[k]:.2f} ± {sd(vals[k]):.2f}"
                                                                        for k in keys)
                     + f" | {gap:.2f} | {secs} | {ptxt} | {pgap} | {vs} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--forget", nargs="+", default=["class:0", "data:5-9:0.4"])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--out", default="bench/out/mixunlearn_fashion")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--allow-train", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    rows, skipped = collect(args.forget, seeds, out, device, args.allow_train)
    parts = [f"Fashion-MNIST, cnn2, recipe laf_cnn, test split, {device_name(device)}, torch {torch.__version__}", ""]
    for spec in args.forget:
        parts += [table(rows, spec, seeds), ""]
    if skipped:
        parts += ["Not yet covered (models not cached): " + "; ".join(f"{s} seed {sd}" for s, sd, _ in skipped)]
    text = "\n".join(parts)
    (out / "table.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
