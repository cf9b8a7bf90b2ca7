"""One self-contained HTML report of a run: the metric table (with ToW), the Plotly charts
(plotly.js inlined once, no CDN), the diagnostics of where each method differs from Retrain,
and the generator's masks and mixes as embedded PNG images. It opens offline.

``python -m mixunlearn report OUT`` writes ``OUT/report.html`` from ``OUT/results.json`` (and
``OUT/tensors.safetensors`` when the run wrote one); the app's Compare page offers the same file.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from . import analysis, diagnostics, figures
from .metrics import METRIC_HELP, METRIC_SETS

TENSORS_FILE = "tensors.safetensors"
TITLES = {"test_r": "Test_r", "test_f": "Test_f", "train_r": "Train_r", "train_f": "Train_f", "test": "Test",
          "asr": "ASR", "mia_efficacy": "MIA-Eff.", "ua": "UA", "ra": "RA", "ta": "TA", "tow": "ToW",
          "tow_mia": "ToW-MIA"}
NOT_RECORDED = "not recorded for this run"


def result_tensors(result: Any) -> dict[str, torch.Tensor]:
    """The tensors a run keeps besides results.json: the attack's per-example view and every
    method's generator snapshots and loss history."""
    out = dict(result.diagnostics or {})
    for name, rec in result.methods.items():
        extras = rec.extras if isinstance(rec.extras, dict) else {}
        if extras.get("snapshots"):
            out.update(analysis.snapshots_to_tensors(name, extras["snapshots"]))
        if extras.get("history"):
            out.update(analysis.history_to_tensors(name, extras["history"]))
    return out


def model_order(results: Mapping[str, Any]) -> list[str]:
    """Retrain, the methods in run order, then the original model."""
    methods = results.get("methods", {})
    order = ["retrain"] + [m for m in methods if m != "retrain"]
    return [m for m in order if m in methods] + (["original"] if results.get("original") else [])


def model_record(results: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    return results.get("original", {}) if name == "original" else results.get("methods", {}).get(name, {})


def display_names(results: Mapping[str, Any]) -> dict[str, str]:
    from .methods import get_method

    shown = dict((results.get("app") or {}).get("display") or {})
    for n in model_order(results):
        if n not in shown:
            try:
                shown[n] = {"original": "Original", "retrain": "Retrain"}.get(n) or get_method(n).display
            except ValueError:
                shown[n] = n
    return shown


def recorded(results: Mapping[str, Any], key: str) -> dict[str, Any]:
    """``{model: record[key]}`` over the models (Retrain first) whose record has ``key``."""
    return {n: model_record(results, n)[key] for n in model_order(results)
            if model_record(results, n).get("status", "done") == "done" and key in model_record(results, n)}


def class_names(results: Mapping[str, Any]) -> list[str] | None:
    names = (results.get("app") or {}).get("class_names")
    if names:
        return list(names)
    try:
        from .datasets import get_info

        return list(get_info(results["config"]["dataset"]).class_names)
    except (KeyError, ValueError, TypeError):
        return None


def forget_classes(results: Mapping[str, Any]) -> list[int]:
    fc = (results.get("app") or {}).get("forget_classes")
    if fc is not None:
        return [int(c) for c in fc]
    try:
        from .data import parse_forget_spec
        from .datasets import get_info

        cfg = results["config"]
        return list(parse_forget_spec(cfg["forget"], get_info(cfg["dataset"]).n_classes).classes)
    except (KeyError, ValueError, TypeError):
        return []


def diagnostic_figures(results: Mapping[str, Any], tensors: Mapping[str, torch.Tensor] | None = None
                       ) -> dict[str, Any]:
    """The diagnostics charts a run has, by name; a chart whose data the run lacks is a string
    saying so instead."""
    shown = display_names(results)
    names = class_names(results)
    out: dict[str, Any] = {}
    per_class = recorded(results, "per_class")
    out["class-wise accuracy vs Retrain"] = (
        figures.per_class_heatmap(per_class, titles=shown, class_names=names, forget_classes=forget_classes(results))
        if "retrain" in per_class else NOT_RECORDED)
    mats = recorded(results, "prediction_matrix")
    for which, label in (("forget", "prediction matrix on D_f"), ("test", "prediction matrix on the test split")):
        out[label] = (figures.prediction_matrices({n: m[which] for n, m in mats.items() if which in m},
                                                  titles=shown, class_names=names) if mats else NOT_RECORDED)
    cka = recorded(results, "cka")
    layers = ((results.get("info") or {}).get("diagnostics") or {}).get("cka_layers")
    out["layer-wise similarity (linear CKA)"] = (figures.cka_chart(cka, layers, titles=shown)
                                                 if cka and layers else NOT_RECORDED)
    view = diagnostics.attack_view(tensors or {}, model_order(results))
    out["membership attack scores"] = (
        figures.attack_distributions(view.scores, titles=shown, set_titles=diagnostics.ATTACK_SET_TITLES)
        if view is not None else NOT_RECORDED)
    return out


# --------------------------------------------------------------------------- images


def png_data_uri(img: Any, scale: int = 8, colormap: bool = False) -> str:
    """An image (H x W, C x H x W or 1 x H x W; values in [0, 1]) as a PNG data URI, enlarged by
    ``scale`` with nearest-neighbour pixels; ``colormap``: a one-channel map in viridis."""
    from PIL import Image

    a = np.asarray(img.detach().cpu().float() if isinstance(img, torch.Tensor) else img, dtype=np.float32)
    if a.ndim == 3 and a.shape[0] in (1, 3):
        a = a[0] if a.shape[0] == 1 else np.transpose(a, (1, 2, 0))
    a = np.nan_to_num(np.clip(a, 0.0, 1.0))
    if colormap and a.ndim == 2:
        from plotly.colors import hex_to_rgb, sequential

        stops = np.array([hex_to_rgb(c) for c in sequential.Viridis], dtype=np.float32) / 255.0
        pos = np.linspace(0.0, 1.0, len(stops))
        a = np.stack([np.interp(a, pos, stops[:, ch]) for ch in range(3)], axis=-1)
    u8 = (a * 255).round().astype(np.uint8)
    im = Image.fromarray(u8)
    im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def generator_section(tensors: Mapping[str, torch.Tensor] | None, shown: Mapping[str, str],
                      max_pairs: int = 6) -> str:
    """The last generator snapshot of every method that has one, at its middle λ: per probe pair the
    forget image, the retain image, the mask (viridis, forget share) and the MixBlock and vanilla mixes."""
    parts: list[str] = []
    for method in analysis.snapshot_methods(tensors or {}):
        snaps = analysis.snapshots_from_tensors(tensors, method)
        if not snaps or "mask" not in snaps[-1]:
            continue
        snap = snaps[-1]
        lams = np.asarray(snap["lams"], dtype=float).reshape(-1)
        li = len(lams) // 2
        size = max(1, 96 // max(1, int(snap["x_f"].shape[-1])))
        rows = []
        for k in range(min(max_pairs, len(snap["x_f"]))):
            cells = [png_data_uri(snap["x_f"][k], size), png_data_uri(snap["x_r"][k], size),
                     png_data_uri(snap["mask"][li][k], size, colormap=True), png_data_uri(snap["mixed"][li][k], size),
                     png_data_uri(snap["vanilla"][li][k], size)]
            rows.append("<tr>" + "".join(f"<td><img alt='pair {k}' src='{c}'></td>" for c in cells) + "</tr>")
        head = "".join(f"<th>{html.escape(c)}</th>" for c in figures.GEN_COLUMNS)
        parts.append(f"<h3>{html.escape(shown.get(method, method))}: generator update {snap.get('update', '?')}, "
                     f"λ = {lams[li]:g}</h3><table class='gen'><tr>{head}</tr>{''.join(rows)}</table>")
    return "".join(parts)


# --------------------------------------------------------------------------- the document


def _fmt(v: Any) -> str:
    return "–" if v is None or (isinstance(v, float) and v != v) else (f"{v:.2f}" if isinstance(v, (int, float))
                                                                          else html.escape(str(v)))


def metrics_table_html(results: Mapping[str, Any]) -> str:
    level = (results.get("info") or {}).get("level", "class")
    primary = list(METRIC_SETS[level])
    cols = primary + ["gap", "tow", "tow_mia", "seconds"] + [m for m in METRIC_SETS["A"] if m not in primary]
    shown = display_names(results)
    head = "".join(f"<th title='{html.escape(METRIC_HELP.get(c, ''))}'>{TITLES.get(c, c)}</th>" for c in cols)
    head = head.replace(">gap<", ">gap to Retrain<").replace(">seconds<", ">time (s)<")
    rows = []
    for n in model_order(results):
        rec = model_record(results, n)
        m = rec.get("metrics") or {}
        vals = {**m, "gap": rec.get("gap_to_retrain"), "seconds": rec.get("seconds")}
        status = "" if rec.get("status", "done") == "done" else f" ({html.escape(rec.get('status', ''))})"
        rows.append(f"<tr><td>{html.escape(shown.get(n, n))}{status}</td>"
                    + "".join(f"<td>{_fmt(vals.get(c))}</td>" for c in cols) + "</tr>")
    return f"<table class='m'><tr><th>model</th>{head}</tr>{''.join(rows)}</table>"


STYLE = ("body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em}"
         "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}"
         "td:first-child{text-align:left}table.gen td{border:none;padding:2px}.na{color:#777;font-style:italic}")


def build_report(results: Mapping[str, Any], tensors: Mapping[str, torch.Tensor] | None = None,
                 title: str | None = None) -> str:
    """The report of one run (a results.json document, and the run's tensors when there are any)
    as one HTML string that needs no network."""
    cfg = results.get("config") or {}
    info = results.get("info") or {}
    title = title or (f"MixUnlearn run: {cfg.get('dataset', '?')}, forget {cfg.get('forget', '?')}, "
                      f"seed {cfg.get('seed', '?')}")
    rows = [r for r in _comparison_rows(results) if r["status"] == "done"]
    level = info.get("level", "class")
    figs: dict[str, Any] = {
        "metrics (Protocol B)": figures.metrics_bar(rows, list(METRIC_SETS[level]), titles=TITLES),
        "gap to Retrain and time": figures.gap_bar([r for r in rows if r["method"] != "original"]),
    }
    figs.update(diagnostic_figures(results, tensors))
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
             f"<p>{info.get('n_forget', '?')} forgotten / {info.get('n_retain', '?')} retained training examples, "
             f"scored on {info.get('n_test', '?')} {html.escape(str(info.get('eval_split', 'test')))} examples; "
             f"model {html.escape(str(cfg.get('model', '?')))}, recipe {html.escape(str(cfg.get('recipe', '?')))}, "
             f"device {html.escape(str(info.get('device', '?')))}, "
             f"mixunlearn {html.escape(str(info.get('version', '?')))}."
             "</p><h2>Metrics</h2>", metrics_table_html(results),
             "<p>Values in %. Closer to Retrain is better for every metric; ToW is 100 when the forget, retain "
             "and test accuracies equal Retrain's.</p>"]
    plotly_done = False
    for name, fig in figs.items():
        parts.append(f"<h2>{html.escape(name)}</h2>")
        if isinstance(fig, str):
            parts.append(f"<p class='na'>{html.escape(fig)}</p>")
            continue
        parts.append(fig.to_html(include_plotlyjs=not plotly_done, full_html=False))
        plotly_done = True
    gen = generator_section(tensors, display_names(results))
    parts.append("<h2>Generator: masks and mixes</h2>" + (gen or f"<p class='na'>{NOT_RECORDED} "
                                                                "(no MixUnlearn generator snapshots)</p>"))
    parts.append("</body></html>")
    return "\n".join(parts)


def _comparison_rows(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    from .jobs import comparison_rows

    return comparison_rows(dict(results))
