"""MixUnlearn ablations (METHOD.md §8, the paper's Table 3): label-agnostic, class-level, test split.

Variants of ``mixunlearn_agnostic`` at the family defaults: full; w/o the share constraint
(``share_constraint="none"``, ours: the paper has no constraint to ablate); w/o runner-up pairing
(``pairing="random"``, the paper's π; ours); w/o MixBlock (vanilla mixup, α ∈ {0.35, 0.75, 1.5});
w/o L_real; w/o L_mix; w/o Sharpen. Each runs on every seed (a stored run is reused only when its
config equals the variant's config under today's defaults), and the
table gives mean ± std of Test_r / Test_f / ASR, the gap to our Retrain (from the means), and the
paper's Table 3 row for the same variant (MNIST's rows beside digits, as context only: digits is
not MNIST). Fashion-MNIST needs its original and Retrain in the default model cache.

    python bench/ablations.py --dataset digits --seeds 0,1,2
    python bench/ablations.py --dataset fashion_mnist --seeds 0,1,2
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

import numpy as np  # noqa: E402
import torch  # noqa: E402

from mixunlearn.methods import make_config, run_method  # noqa: E402
from mixunlearn.metrics import evaluate, gap_to_retrain  # noqa: E402
from mixunlearn.paper import ablation_rows  # noqa: E402
from mixunlearn.utils import device_name, resolve_device  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tune_mixunlearn import load_setting  # noqa: E402

VARIANTS = [
    # (our label, overrides, the paper's Table 3 row name)
    ("MixUnlearn (full)", {}, "MixUnlearn (Ours)"),
    ("w/o constraint", {"share_constraint": "none"}, None),
    ("w/o runner-up pairing", {"pairing": "random"}, None),
    ("w/o MB (α=0.35)", {"mixer": "vanilla", "vanilla_alpha": 0.35}, "w/o MB (alpha=0.35)"),
    ("w/o MB (α=0.75)", {"mixer": "vanilla", "vanilla_alpha": 0.75}, "w/o MB (alpha=0.75)"),
    ("w/o MB (α=1.5)", {"mixer": "vanilla", "vanilla_alpha": 1.5}, "w/o MB (alpha=1.5)"),
    ("w/o L_real", {"use_l_real": False}, "w/o L_real"),
    ("w/o L_mix", {"use_l_mix": False}, "w/o L_mix"),
    ("w/o Sharpen", {"sharpen": False}, "w/o Sharpen"),
]
KEYS = ("test_r", "test_f", "asr")


def config_key(cfg) -> str:
    return json.dumps(dataclasses.asdict(cfg), sort_keys=True, default=str)
PAPER_NAME = {"digits": "mnist", "fashion_mnist": "fashion_mnist"}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="digits", choices=("digits", "fashion_mnist"))
    p.add_argument("--forget", default="class:0")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--out", default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--allow-train", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    out = Path(args.out or f"bench/out/ablations_{args.dataset}")
    out.mkdir(parents=True, exist_ok=True)
    log = out / "runs.jsonl"
    family = "digits" if args.dataset == "digits" else "cnn"  # the tables' models (TABLE_RECIPE)
    configs = {label: config_key(make_config("mixunlearn_agnostic", family, ov)) for label, ov, _ in VARIANTS}
    rows = [json.loads(x) for x in log.read_text().splitlines() if x.strip()] if log.exists() else []
    # A stored run counts only if it was made with the variant's config under today's defaults.
    rows = [r for r in rows if r["variant"] == "Retrain" or r.get("config") == configs.get(r["variant"])]
    done = {(r["variant"], r["seed"]) for r in rows}
    seeds = [int(s) for s in args.seeds.split(",")]
    for seed in seeds:
        todo = [v for v in VARIANTS if (v[0], seed) not in done]
        if not todo and ("Retrain", seed) in done:
            continue
        data, original, retrain = load_setting(args.dataset, args.forget, seed, device, args.allow_train,
                                               eval_split="test")
        assert original.family == family, (original.family, family)
        r_metrics = evaluate(retrain, data, seed)
        if ("Retrain", seed) not in done:
            row = {"variant": "Retrain", "seed": seed, "metrics": r_metrics, "gap": 0.0, "seconds": None}
            rows.append(row)
            with log.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
        for label, overrides, _ in todo:
            cfg = make_config("mixunlearn_agnostic", original.family, overrides)
            t0 = time.time()
            res = run_method("mixunlearn_agnostic", original, data, cfg, device=device)
            m = evaluate(res.model, data, seed)
            row = {"variant": label, "seed": seed, "overrides": overrides, "config": configs[label], "metrics": m,
                   "gap": gap_to_retrain(m, r_metrics, "class"), "seconds": res.seconds,
                   "health": res.extras.get("health", {})}
            rows.append(row)
            with log.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
            print(f"seed {seed} {label}: test_r {m['test_r']:.2f} test_f {m['test_f']:.2f} asr {m['asr']:.2f} "
                  f"({time.time() - t0:.1f}s)", flush=True)
    paper = {r.method: r for r in ablation_rows(PAPER_NAME[args.dataset])}
    paper_ds = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST"}[PAPER_NAME[args.dataset]]
    per = lambda v: [r for r in rows if r["variant"] == v and r["seed"] in seeds]  # noqa: E731
    retrain_mean = {k: float(np.mean([r["metrics"][k] for r in per("Retrain")])) for k in KEYS}
    head = (f"| variant (agnostic, {args.forget}) | Test_r | Test_f | ASR | gap to our Retrain | seconds | "
            f"paper {paper_ds}: Test_r / Test_f / ASR | paper gap | mask std λ 0.5 | retain gain |")
    lines = [f"**Ablations, {args.dataset}, {args.forget}, seeds {args.seeds}, test split, "
             f"{device_name(device)}**", "", head, "|---|---|---|---|---|---|---|---|---|---|"]
    for label, _, paper_name in [("Retrain", None, "Retrain")] + VARIANTS:
        rs = per(label)
        if not rs:
            continue
        cell = lambda k, rs=rs: (f"{np.mean([r['metrics'][k] for r in rs]):.2f} ± "  # noqa: E731
                                 f"{np.std([r['metrics'][k] for r in rs], ddof=1) if len(rs) > 1 else 0:.2f}")
        means = {k: float(np.mean([r["metrics"][k] for r in rs])) for k in KEYS}
        gap = gap_to_retrain(means, retrain_mean, "class")
        secs = [r["seconds"] for r in rs if r["seconds"] is not None]
        pr = paper.get(paper_name) if paper_name else None
        ptxt = " / ".join(f"{pr.metrics[k][0]:.2f}" for k in KEYS) if pr else "–"
        pgap = f"{pr.gap:.2f}" if pr and pr.gap is not None else "–"
        hs = [r["health"] for r in rs if r.get("health")]
        htxt = (f"{np.mean([h['std_mid'] for h in hs]):.3f} | {np.mean([h['gain_retain'] for h in hs]):.3f}"
                if hs else "– | –")
        lines.append(f"| {label} | {cell('test_r')} | {cell('test_f')} | {cell('asr')} | {gap:.2f} | "
                     f"{f'{np.mean(secs):.1f}' if secs else '–'} | {ptxt} | {pgap} | {htxt} |")
    text = "\n".join(lines)
    (out / "table.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
