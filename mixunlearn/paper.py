"""The numbers the MixUnlearn paper reports (Peng, Tang, Yang, ICLR 2025, Tables 1-3), as
shipped in ``resources/paper_tables.json`` (means and standard deviations over 5 seeds).

They come from the paper's own recipe (224px ResNet-18 / LAF's CNN), so they are context
beside our runs, never pass/fail thresholds. The gap to Retrain in that file is derived, not
reported by the paper.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

from .data import ForgetSpec, parse_forget_spec

PAPER_DATASETS = {"cifar10": "CIFAR-10", "svhn": "SVHN", "mnist": "MNIST", "fashion_mnist": "FASHION-MNIST"}
METRIC_KEYS = {"Test_r": "test_r", "Test_f": "test_f", "ASR": "asr", "Train_r": "train_r", "Train_f": "train_f",
               "Test": "test"}
# Paper row name -> our registry name (None: shown from the paper only, marked †).
METHOD_KEYS = {
    ("aware", "Retrain"): "retrain", ("aware", "NegGrad"): "neggrad", ("aware", "Boundary"): "boundary_shrink",
    ("aware", "SISA"): None, ("aware", "Unrolling"): None, ("aware", "T-S"): "bad_teacher",
    ("aware", "SCRUB"): "scrub", ("aware", "DSMixup"): None, ("aware", "GLI"): None, ("aware", "LAF+R"): "laf_r",
    ("aware", "MixUnlearn (Ours)"): "mixunlearn", ("agnostic", "LAF"): "laf", ("agnostic", "RandLabel"): "randlabel",
    ("agnostic", "L-Mix"): "l_mix", ("agnostic", "MixUnlearn (Ours)"): "mixunlearn_agnostic",
}
PAPER_CLASS_SPEC = "class:0"
PAPER_DATA_SPEC = "data:5-9:0.4"


@dataclass(frozen=True)
class PaperRow:
    method: str  # as printed in the paper
    key: str | None  # our registry name, None for methods shown from the paper only
    labels: str  # "aware" / "agnostic" / "ablation"
    metrics: dict[str, tuple[float, float]]  # our metric key -> (mean, std)
    gap: float | None  # derived gap to the paper's Retrain

    @property
    def dagger(self) -> bool:
        return self.key is None and self.labels != "ablation"


@lru_cache(maxsize=1)
def load_tables() -> dict[str, Any]:
    with resources.files(__package__).joinpath("resources/paper_tables.json").open() as fh:
        return json.load(fh)


def setting_level(dataset: str, spec: ForgetSpec | str) -> str | None:
    """'class' or 'data' when (dataset, spec) is a setting the paper reports, else None."""
    if dataset not in PAPER_DATASETS:
        return None
    spec = parse_forget_spec(spec) if isinstance(spec, str) else spec
    if str(spec) == PAPER_CLASS_SPEC:
        return "class"
    if str(spec) == PAPER_DATA_SPEC:
        return "data"
    return None


def _rows(table: dict, gaps: dict, group: str, gap_prefix: str | None = None) -> list[PaperRow]:
    out = []
    for entry in table:
        metrics = {METRIC_KEYS[k]: (float(v[0]), float(v[1])) for k, v in entry.items() if k in METRIC_KEYS}
        gap = gaps.get(f"{gap_prefix or group}:{entry['method']}")
        key = METHOD_KEYS.get((group, entry["method"])) if group != "ablation" else None
        if entry["method"] == "Retrain":
            gap = 0.0
        out.append(PaperRow(entry["method"], key, group, metrics, gap))
    return out


def paper_rows(dataset: str, level: str) -> list[PaperRow]:
    """The paper's Table 1 (``level="class"``) or Table 2 (``"data"``) rows for a dataset."""
    t = load_tables()
    name = PAPER_DATASETS.get(dataset)
    table_key, gap_key = {"class": ("table1_class_level", "derived_avg_abs_gap_table1"),
                          "data": ("table2_data_level_basic", "derived_avg_abs_gap_table2")}[level]
    if name is None or name not in t[table_key]:
        return []
    gaps = t[gap_key].get(name, {})
    rows = []
    for group in ("aware", "agnostic"):
        rows += _rows(t[table_key][name].get(group, []), gaps, group)
    return rows


def ablation_rows(dataset: str) -> list[PaperRow]:
    """The paper's Table 3 (label-agnostic, class-level ablations) for a dataset."""
    t = load_tables()
    name = PAPER_DATASETS.get(dataset)
    if name is None:
        return []
    table = t["table3_ablation_class_level_label_agnostic"].get(name, {})
    gaps = t["derived_avg_abs_gap_table3"].get(name, {})
    rows = []
    for name, entries in table.items():
        rows += _rows(entries, gaps, "ablation", gap_prefix=name)
    return rows


def paper_row_for(dataset: str, spec: ForgetSpec | str, method: str) -> PaperRow | None:
    """The paper's row for our method ``method`` in this setting, if the paper reports one."""
    level = setting_level(dataset, spec)
    if level is None:
        return None
    for row in paper_rows(dataset, level):
        if row.key == method:
            return row
    return None
