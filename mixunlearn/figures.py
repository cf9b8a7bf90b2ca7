"""Pure functions that turn results into Plotly figures. Pages only lay them out.

No function here reads files, touches Streamlit or trains anything; every input is plain data
(dicts, NumPy arrays, CPU tensors), so each figure can be built and checked in a test.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

# Colour-blind-safe categorical palette (Okabe-Ito, then a few Tableau tones).
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000",
           "#8C564B", "#7F7F7F", "#17BECF", "#BCBD22")
FORGET_COLOUR = "#D62728"
SET_COLOURS = {"forget": "#D62728", "unseen": "#1F77B4", "retain": "#7F7F7F"}
MODEL_ORDER_HINT = ("retrain", "original")


def _np(a: Any) -> np.ndarray:
    if hasattr(a, "detach"):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def _grid_shape(n: int, max_cols: int) -> tuple[int, int]:
    cols = max(1, min(max_cols, n))
    return int(math.ceil(n / cols)), cols


def _layout(fig: go.Figure, title: str | None = None, height: int | None = None) -> go.Figure:
    fig.update_layout(title=title, margin=dict(l=40, r=20, t=60 if title else 30, b=40), template="plotly_white",
                      height=height)
    return fig


# --------------------------------------------------------------------------- metrics


def metrics_bar(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str], *, name_key: str = "display",
                titles: Mapping[str, str] | None = None, title: str | None = None) -> go.Figure:
    """Grouped bars: one group per metric, one bar per method (rows in the order given)."""
    fig = go.Figure()
    labels = [(titles or {}).get(m, m) for m in metrics]
    for i, row in enumerate(rows):
        vals = [row.get(m) for m in metrics]
        vals = [None if v is None or (isinstance(v, float) and v != v) else v for v in vals]
        fig.add_bar(name=str(row.get(name_key, row.get("method", i))), x=labels, y=vals,
                    marker_color=PALETTE[i % len(PALETTE)],
                    text=[f"{v:.1f}" if v is not None else "" for v in vals], textposition="outside")
    fig.update_layout(barmode="group", yaxis_title="%", yaxis_range=[0, 110], legend_title_text="method")
    return _layout(fig, title, 420)


def gap_bar(rows: Sequence[Mapping[str, Any]], *, name_key: str = "display", title: str | None = None) -> go.Figure:
    """Gap to Retrain (lower is better) and wall time per method, side by side."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("gap to Retrain (lower is better)", "wall time (s)"))
    names = [str(r.get(name_key)) for r in rows]
    fig.add_bar(x=names, y=[r.get("gap") for r in rows], marker_color=PALETTE[0], showlegend=False, row=1, col=1)
    fig.add_bar(x=names, y=[r.get("seconds") for r in rows], marker_color=PALETTE[1], showlegend=False, row=1, col=2)
    return _layout(fig, title, 360)


# --------------------------------------------------------------------------- embeddings


def embedding_grid(
    layouts: Mapping[str, np.ndarray],
    labels: np.ndarray,
    forget_classes: Sequence[int],
    *,
    titles: Mapping[str, str] | None = None,
    class_names: Sequence[str] | None = None,
    hover: Mapping[str, Sequence[str]] | None = None,
    max_cols: int = 3,
    title: str | None = None,
) -> go.Figure:
    """One scatter panel per model, all in one frame (shared axis ranges), points coloured by
    class, the forgotten class(es) drawn on top in red with a dark outline.

    Every point carries ``customdata = [sample index, panel index]`` so a box/lasso selection
    maps back to samples and models.
    """
    names = list(layouts)
    labels = _np(labels).astype(int)
    forget = set(int(c) for c in forget_classes)
    n_rows, n_cols = _grid_shape(len(names), max_cols)
    fig = make_subplots(rows=n_rows, cols=n_cols, subplot_titles=[(titles or {}).get(n, n) for n in names],
                        horizontal_spacing=0.04, vertical_spacing=0.10)
    all_xy = np.concatenate([np.asarray(v) for v in layouts.values()]) if names else np.zeros((0, 2))
    if len(all_xy):
        lo, hi = all_xy.min(0), all_xy.max(0)
        pad = 0.05 * np.maximum(hi - lo, 1e-6)
        xr, yr = [float(lo[0] - pad[0]), float(hi[0] + pad[0])], [float(lo[1] - pad[1]), float(hi[1] + pad[1])]
    else:
        xr = yr = [-1.0, 1.0]
    idx = np.arange(len(labels))
    is_f = np.isin(labels, list(forget))
    cname = (lambda c: class_names[c] if class_names and 0 <= c < len(class_names) else str(c))
    for p, name in enumerate(names):
        xy = np.asarray(layouts[name])
        r, c = p // n_cols + 1, p % n_cols + 1
        text = list(hover.get(name, [])) if hover else []
        for part, mask in (("retained classes", ~is_f), ("forgotten class", is_f)):
            if not mask.any():
                continue
            colours = ([FORGET_COLOUR] * int(mask.sum()) if part == "forgotten class"
                       else [PALETTE[int(k) % len(PALETTE)] for k in labels[mask]])
            fig.add_trace(go.Scatter(
                x=xy[mask, 0], y=xy[mask, 1], mode="markers",
                marker=dict(color=colours, size=7 if part == "forgotten class" else 5,
                            opacity=0.95 if part == "forgotten class" else 0.55,
                            line=dict(width=0.8 if part == "forgotten class" else 0, color="#222222")),
                customdata=np.stack([idx[mask], np.full(int(mask.sum()), p)], 1),
                text=[text[i] for i in idx[mask]] if text else [f"class {cname(k)}" for k in labels[mask]],
                hovertemplate="%{text}<extra>" + name + "</extra>",
                name=part, legendgroup=part, showlegend=p == 0,
            ), row=r, col=c)
        fig.update_xaxes(range=xr, showticklabels=False, row=r, col=c)
        fig.update_yaxes(range=yr, showticklabels=False, row=r, col=c)
    fig.update_layout(dragmode="lasso", legend=dict(orientation="h", y=-0.05))
    return _layout(fig, title, 330 * n_rows + 60)


def selected_samples(points: Sequence[Mapping[str, Any]]) -> dict[int, list[int]]:
    """A box/lasso selection on :func:`embedding_grid` (Streamlit's ``event.selection.points``)
    as ``{panel index: sorted unique sample indices}``; points without customdata are ignored."""
    out: dict[int, set[int]] = {}
    for p in points or ():
        cd = p.get("customdata") if isinstance(p, Mapping) else None
        if cd is None or len(cd) < 2:
            continue
        out.setdefault(int(cd[1]), set()).add(int(cd[0]))
    return {k: sorted(v) for k, v in sorted(out.items())}


# --------------------------------------------------------------------------- loss KDE


def kde_grid_figure(
    curves: Mapping[str, Mapping[str, Any]],
    *,
    titles: Mapping[str, str] | None = None,
    set_titles: Mapping[str, str] | None = None,
    notes: Mapping[str, str] | None = None,
    max_cols: int = 3,
    title: str | None = None,
) -> go.Figure:
    """Per model (one panel each), densities of per-sample CE for each loss set.

    ``curves[model][set]`` is a :class:`mixunlearn.analysis.KdeCurve` (``.x``, ``.density``,
    ``.n``); x is drawn on a log axis, since the curves are densities of log10 loss.
    """
    names = list(curves)
    n_rows, n_cols = _grid_shape(len(names), max_cols)
    subtitles = []
    for n in names:
        t = (titles or {}).get(n, n)
        if notes and notes.get(n):
            t = f"{t}<br><sup>{notes[n]}</sup>"
        subtitles.append(t)
    fig = make_subplots(rows=n_rows, cols=n_cols, subplot_titles=subtitles, shared_xaxes="all",
                        horizontal_spacing=0.05, vertical_spacing=0.16)
    seen: set[str] = set()
    for p, name in enumerate(names):
        r, c = p // n_cols + 1, p % n_cols + 1
        for s, curve in curves[name].items():
            if curve.n == 0:
                continue
            label = (set_titles or {}).get(s, s)
            fig.add_trace(go.Scatter(x=curve.x, y=curve.density, mode="lines", name=label, legendgroup=s,
                                     showlegend=s not in seen, line=dict(color=SET_COLOURS.get(s), width=2),
                                     fill="tozeroy", opacity=0.6,
                                     hovertemplate="loss %{x:.3g}<br>density %{y:.3f}<extra>" + label + "</extra>"),
                          row=r, col=c)
            seen.add(s)
        fig.update_xaxes(type="log", title_text="per-sample cross-entropy" if r == n_rows else None, row=r, col=c)
    fig.update_layout(legend=dict(orientation="h", y=-0.12))
    return _layout(fig, title, 300 * n_rows + 80)


# --------------------------------------------------------------------------- live curves


def loss_curves(history: Mapping[str, Sequence[Mapping[str, float]]], *, titles: Mapping[str, str] | None = None,
                title: str | None = None, max_cols: int = 3) -> go.Figure:
    """One panel per source (method), one line per logged loss against the step."""
    names = [n for n, h in history.items() if any(k not in ("step",) and not k.startswith("probe_")
                                                  for row in h for k in row)]
    if not names:
        return _layout(go.Figure(), title or "no losses logged yet", 200)
    n_rows, n_cols = _grid_shape(len(names), max_cols)
    fig = make_subplots(rows=n_rows, cols=n_cols, subplot_titles=[(titles or {}).get(n, n) for n in names])
    for p, name in enumerate(names):
        rows = history[name]
        keys = sorted({k for row in rows for k in row if k != "step" and not k.startswith("probe_")})
        for j, k in enumerate(keys):
            pts = [(row["step"], row[k]) for row in rows if k in row]
            fig.add_trace(go.Scatter(x=[s for s, _ in pts], y=[v for _, v in pts], mode="lines", name=f"{name}: {k}",
                                     line=dict(color=PALETTE[j % len(PALETTE)])),
                          row=p // n_cols + 1, col=p % n_cols + 1)
    fig.update_xaxes(title_text="step")
    return _layout(fig, title, 280 * n_rows + 60)


def probe_curves(history: Mapping[str, Sequence[Mapping[str, float]]], *, titles: Mapping[str, str] | None = None,
                 title: str | None = None) -> go.Figure:
    """Forget / retain accuracy on the small probe sets as training moves, per source."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("D_f probe", "D_r probe"))
    i = 0
    for name, rows in history.items():
        pts = [r for r in rows if "probe_forget_acc" in r]
        if not pts:
            continue
        colour = PALETTE[i % len(PALETTE)]
        label = (titles or {}).get(name, name)
        for col, key in ((1, "probe_forget_acc"), (2, "probe_retain_acc")):
            fig.add_trace(go.Scatter(x=[r["step"] for r in pts], y=[r[key] for r in pts], mode="lines", name=label,
                                     legendgroup=name, showlegend=col == 1, line=dict(color=colour)), row=1, col=col)
        i += 1
    fig.update_yaxes(range=[-3, 103], title_text="%")
    fig.update_xaxes(title_text="step")
    return _layout(fig, title, 320)


# --------------------------------------------------------------------------- images


def _image_trace(img: np.ndarray, *, zmin: float = 0.0, zmax: float = 1.0, colorscale: str = "gray",
                 showscale: bool = False, name: str = "") -> go.BaseTraceType:
    """A C x H x W (C = 1 or 3) or H x W array in [0, 1] as a heatmap or RGB image."""
    img = _np(img).astype(float)
    if img.ndim == 3 and img.shape[0] == 1:
        img = img[0]
    if img.ndim == 3:  # RGB
        rgb = (np.clip(np.transpose(img, (1, 2, 0)), 0, 1) * 255).astype(np.uint8)
        return go.Image(z=rgb, name=name, hoverinfo="skip")
    return go.Heatmap(z=img[::-1], zmin=zmin, zmax=zmax, colorscale=colorscale, showscale=showscale, name=name,
                      hovertemplate="%{z:.2f}<extra>" + name + "</extra>",
                      colorbar=dict(title="forget share", len=0.5, y=0.75) if showscale else None)


def _hide_axes(fig: go.Figure) -> None:
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False, scaleanchor=None)


def image_grid(images: Any, captions: Sequence[str] | None = None, *, max_cols: int = 8, title: str | None = None,
               tile: int = 90) -> go.Figure:
    """A grid of images (N x C x H x W in [0, 1]) with a caption above each."""
    images = _np(images)
    n = len(images)
    if n == 0:
        return _layout(go.Figure(), title or "no images", 120)
    n_rows, n_cols = _grid_shape(n, max_cols)
    fig = make_subplots(rows=n_rows, cols=n_cols, subplot_titles=list(captions or [""] * n),
                        horizontal_spacing=0.01, vertical_spacing=0.3 / max(1, n_rows))
    for i in range(n):
        fig.add_trace(_image_trace(images[i]), row=i // n_cols + 1, col=i % n_cols + 1)
    _hide_axes(fig)
    fig.update_annotations(font_size=11)
    return _layout(fig, title, tile * n_rows + 80)


def class_sample_grid(images_by_class: Mapping[int, Any], class_names: Sequence[str], *, per_class: int = 6,
                      highlight: Sequence[int] = (), title: str | None = None) -> go.Figure:
    """One row per class with a few sample images; highlighted classes get a red label."""
    classes = list(images_by_class)
    n_rows, n_cols = len(classes), per_class
    fig = make_subplots(rows=n_rows, cols=n_cols, horizontal_spacing=0.005, vertical_spacing=0.01)
    for r, c in enumerate(classes):
        imgs = _np(images_by_class[c])[:per_class]
        for j in range(len(imgs)):
            fig.add_trace(_image_trace(imgs[j]), row=r + 1, col=j + 1)
        name = class_names[c] if c < len(class_names) else str(c)
        fig.update_yaxes(title_text=f"{c}: {name}", title_font=dict(color=FORGET_COLOUR if c in highlight else "#333",
                                                                     size=11), row=r + 1, col=1)
    _hide_axes(fig)
    return _layout(fig, title, 46 * n_rows + 60)


# --------------------------------------------------------------------------- generator


GEN_COLUMNS = ("forget x_f", "retain x_r", "mask (forget share)", "MixBlock mix", "vanilla λ-mix")


def generator_grid(snap: Mapping[str, Any], lam_index: int = 1, *, class_names: Sequence[str] | None = None,
                   max_pairs: int = 8, title: str | None = None) -> go.Figure:
    """For one generator snapshot and one λ: per probe pair a row of forget image, retain image,
    mask heatmap on a fixed 0-1 scale, the MixBlock mix and the vanilla λ-mix, with λ, the mask's
    mean forget share and the model's prediction on the mix."""
    lams = _np(snap["lams"]).astype(float)
    li = int(min(max(0, lam_index), len(lams) - 1))
    lam = float(lams[li])
    x_f, x_r = _np(snap["x_f"]), _np(snap["x_r"])
    mask, mixed, vanilla = _np(snap["mask"])[li], _np(snap["mixed"])[li], _np(snap["vanilla"])[li]
    n_pairs = min(max_pairs, len(x_f))
    cname = (lambda c: class_names[c] if class_names and 0 <= c < len(class_names) else str(c))
    pred = _np(snap["pred"])[li] if "pred" in snap else None
    f_cls = _np(snap["f_cls"]) if "f_cls" in snap else None
    r_cls = _np(snap["r_cls"]) if "r_cls" in snap else None
    mm = _np(snap["mask_mean"])[li] if "mask_mean" in snap else mask.reshape(len(mask), -1).mean(1)
    p_f = _np(snap["p_f"])[li] if "p_f" in snap else None
    p_r = _np(snap["p_r"])[li] if "p_r" in snap else None
    fig = make_subplots(rows=n_pairs, cols=5, column_titles=list(GEN_COLUMNS), horizontal_spacing=0.02,
                        vertical_spacing=0.04)
    for k in range(n_pairs):
        r = k + 1
        fig.add_trace(_image_trace(x_f[k], name="forget"), row=r, col=1)
        fig.add_trace(_image_trace(x_r[k], name="retain"), row=r, col=2)
        fig.add_trace(_image_trace(mask[k], colorscale="Viridis", showscale=k == 0, name="mask"), row=r, col=3)
        fig.add_trace(_image_trace(mixed[k], name="mix"), row=r, col=4)
        fig.add_trace(_image_trace(vanilla[k], name="vanilla"), row=r, col=5)
        # The pair's numbers go in its row label, left of the row (never between rows).
        bits = [f"<b>pair {k}</b>"]
        if f_cls is not None and r_cls is not None:
            bits.append(f"{cname(int(f_cls[k]))} + {cname(int(r_cls[k]))}")
        bits.append(f"share {float(mm[k]):.2f}")
        if pred is not None:
            bits.append(f"pred {cname(int(pred[k]))}")
        if p_f is not None and p_r is not None:
            bits.append(f"p_f {float(p_f[k]):.2f} p_r {float(p_r[k]):.2f}")
        dom = fig.get_subplot(r, 1).yaxis.domain
        fig.add_annotation(text="<br>".join(bits), xref="paper", yref="paper", x=-0.01, y=(dom[0] + dom[1]) / 2,
                           xanchor="right", yanchor="middle", align="right", showarrow=False, font=dict(size=10))
    _hide_axes(fig)
    head = f"λ = {lam:g} · generator update {snap.get('update', '?')} (step {snap.get('step', '?')})"
    fig = _layout(fig, title or head, 150 * n_pairs + 90)
    fig.update_layout(margin=dict(l=130))
    return fig


def generator_curves(history: Mapping[str, Any], *, title: str | None = None) -> go.Figure:
    """L_gen, L_mix, L_real against the step; the mean mask share (with λ when logged) and the
    mask's spatial standard deviation."""
    h = {k: _np(v).astype(float) for k, v in history.items()}
    step = h.get("step", np.arange(len(next(iter(h.values()))) if h else 0))
    fig = make_subplots(rows=1, cols=2, subplot_titles=("losses", "mask: mean forget share / spatial std"))
    for j, key in enumerate(("l_gen", "l_mix", "l_real")):
        if key in h and np.isfinite(h[key]).any():
            ok = np.isfinite(h[key])
            fig.add_trace(go.Scatter(x=step[ok], y=h[key][ok], mode="lines", name=key,
                                     line=dict(color=PALETTE[j])), row=1, col=1)
    for j, key in enumerate(("mask_share", "lam", "mask_std")):
        if key in h and np.isfinite(h[key]).any():
            ok = np.isfinite(h[key])
            fig.add_trace(go.Scatter(x=step[ok], y=h[key][ok], mode="lines" if key != "lam" else "markers",
                                     name={"mask_share": "mean mask share", "lam": "λ",
                                           "mask_std": "mask std"}[key],
                                     marker=dict(size=3), line=dict(color=PALETTE[3 + j])), row=1, col=2)
    fig.update_xaxes(title_text="step")
    return _layout(fig, title, 340)


# --------------------------------------------------------------------------- generator health and debug views


HEALTH_TITLES = {"share_err": "share error", "share_slope": "share-vs-λ slope", "std_mid": "std at λ 0.5",
                 "gain_retain": "gain (retain)", "gain_forget": "gain (forget)"}
# Panels of :func:`generator_health_curves`: title, the health keys drawn in it, a reference level.
_HEALTH_PANELS = (("share error |share − λ| (0 = share follows λ)", ("share_err",), 0.0),
                  ("share-vs-λ slope (1 = tied to λ, 0 = deaf)", ("share_slope",), 1.0),
                  ("mask spatial std at λ 0.5 (0 = flat blend)", ("std_mid",), 0.0),
                  ("adversarial gain vs a plain blend (> 0 = harder)", ("gain_retain", "gain_forget"), 0.0))
# The least y range of each panel, widened to the data: float noise around a constant (a share error of
# 1e-8 under the projection, a slope of 1 − 6e-8) must read as the constant, not fill the panel.
_HEALTH_RANGES = ((0.0, 0.1), (-0.1, 1.2), (0.0, 0.15), (-0.02, 0.05))
_HEALTH_COLOURS = {"share_err": PALETTE[0], "share_slope": PALETTE[1], "std_mid": PALETTE[2],
                   "gain_retain": SET_COLOURS["retain"], "gain_forget": FORGET_COLOUR}


def generator_health_curves(snapshots: Sequence[Mapping[str, Any]], *, selected_update: int | None = None,
                            title: str | None = None) -> go.Figure:
    """The generator's health over generator updates (x = the snapshot's ``update``), one point per
    snapshot, read from the snapshot keys ``h_{key}`` (METHOD.md §9): share error, share-vs-λ slope,
    spatial std at λ 0.5 and the adversarial gain to the retain and the forget target; dotted lines
    at the reference levels, a dashed one at ``selected_update``. Snapshots stored without these keys
    are skipped; with none at all the figure is empty and its title says so."""
    snaps = sorted(snapshots, key=lambda s: int(s.get("update", 0)))
    if not any(f"h_{k}" in s for s in snaps for k in HEALTH_TITLES):
        return _layout(go.Figure(), title or "no generator health numbers in these snapshots", 160)
    fig = make_subplots(rows=2, cols=2, subplot_titles=[p[0] for p in _HEALTH_PANELS], horizontal_spacing=0.08,
                        vertical_spacing=0.2)
    for p, (_, keys, ref) in enumerate(_HEALTH_PANELS):
        r, c = p // 2 + 1, p % 2 + 1
        lo, hi = _HEALTH_RANGES[p]
        for key in keys:
            pts = [(int(s.get("update", 0)), float(_np(s[f"h_{key}"]))) for s in snaps if f"h_{key}" in s]
            vals = [v for _, v in pts if np.isfinite(v)]
            if vals:
                pad = 0.05 * (max(hi, max(vals)) - min(lo, min(vals)))
                lo, hi = min(lo, min(vals) - pad), max(hi, max(vals) + pad)
            if pts:
                fig.add_trace(go.Scatter(x=[u for u, _ in pts], y=[v for _, v in pts], mode="lines+markers",
                                         name=HEALTH_TITLES[key], line=dict(color=_HEALTH_COLOURS[key]),
                                         marker=dict(size=5),
                                         hovertemplate="update %{x}<br>%{y:.3f}<extra>" + HEALTH_TITLES[key]
                                         + "</extra>"), row=r, col=c)
        fig.update_yaxes(range=[lo, hi], row=r, col=c)
        fig.add_hline(y=ref, line=dict(dash="dot", color="#999999", width=1), row=r, col=c)
        if selected_update is not None:
            fig.add_vline(x=int(selected_update), line=dict(dash="dash", color="#444444", width=1), row=r, col=c)
    fig.update_xaxes(title_text="generator update", row=2)
    fig.update_annotations(font_size=12)
    fig.update_layout(legend=dict(orientation="h", y=-0.18))
    return _layout(fig, title, 560)


DEBUG_PANELS = ("value map v of x_f", "value map v of x_r", "logit difference m_i − m_j", "mask (forget share)",
                "attention A_f", "attention received in x_r")


def _map_trace(z: np.ndarray, name: str, *, zmin: float | None = None, zmax: float | None = None,
               zmid: float | None = None, colorscale: str = "Viridis") -> go.Heatmap:
    """A 2-D map drawn as stored: row 0 at the top (the page reverses the y axis), hover = row, column."""
    return go.Heatmap(z=z, zmin=zmin, zmax=zmax, zmid=zmid, colorscale=colorscale, name=name,
                      hovertemplate="row %{y}, col %{x}: %{z:.3f}<extra>" + name + "</extra>")


def generator_debug_figure(snap: Mapping[str, Any], pair: int = 0, *, title: str | None = None) -> go.Figure:
    """AdAutoMix-style debug views of the MixBlock for one probe pair at λ = ``debug_lam`` (0.5):
    the value maps v of the forget and the retain image (diverging, 0 in the middle), the logit
    difference m_i − m_j before upsampling, the mask at that λ (fixed 0-1 scale), the attention A_f
    (rows: forget positions, columns: the retain image's positions; rows sum to 1) and its column
    mean × P reshaped to h × w (where the forget positions look in the retain image; 1 = uniform).
    Panels whose keys the snapshot lacks are left out; a snapshot with no debug key at all (a run
    stored before they were recorded) gives an empty figure whose title says so."""
    keys = ("debug_value_f", "debug_value_r", "debug_logit_diff", "debug_attn_f")
    present = [k for k in keys if k in snap]
    if not present:
        return _layout(go.Figure(), title or "no generator debug views in this snapshot", 160)
    n_pairs = len(_np(snap[present[0]]))
    k = int(min(max(0, pair), n_pairs - 1))
    lam = float(_np(snap.get("debug_lam", 0.5)))
    panels: list[tuple[str, go.Heatmap]] = []
    hw: tuple[int, ...] | None = None
    for key, label in (("debug_value_f", DEBUG_PANELS[0]), ("debug_value_r", DEBUG_PANELS[1]),
                       ("debug_logit_diff", DEBUG_PANELS[2])):
        if key in snap:
            z = _np(snap[key])[k].astype(float)
            hw = z.shape
            lim = float(np.abs(z).max()) or 1.0
            panels.append((f"{label}<br><sup>range {z.min():.2f} … {z.max():.2f}</sup>",
                           _map_trace(z, label, zmin=-lim, zmax=lim, zmid=0.0, colorscale="RdBu_r")))
    if "mask" in snap and "lams" in snap:
        lams = _np(snap["lams"]).astype(float)
        li = int(np.argmin(np.abs(lams - lam)))
        m = _np(snap["mask"])[li, k].astype(float)
        panels.append((f"{DEBUG_PANELS[3]} at λ {lams[li]:g}<br><sup>share {m.mean():.2f} · std {m.std():.3f}</sup>",
                       _map_trace(m, DEBUG_PANELS[3], zmin=0.0, zmax=1.0)))
    if "debug_attn_f" in snap:
        a = _np(snap["debug_attn_f"])[k].astype(float)
        n_pos = a.shape[-1]
        panels.append((f"{DEBUG_PANELS[4]} (forget rows × retain columns)<br><sup>mean row max "
                       f"{a.max(1).mean():.3f} · flat = 1/P = {1 / n_pos:.3f}</sup>",
                       _map_trace(a, DEBUG_PANELS[4], zmin=0.0)))
        if hw is None or hw[0] * hw[1] != n_pos:
            side = int(round(math.sqrt(n_pos)))
            hw = (side, n_pos // side) if side * (n_pos // side) == n_pos else (1, n_pos)
        received = a.mean(0).reshape(hw) * n_pos
        panels.append((f"{DEBUG_PANELS[5]} (× P, 1 = uniform)<br><sup>range {received.min():.2f} … "
                       f"{received.max():.2f}</sup>", _map_trace(received, DEBUG_PANELS[5], zmin=0.0)))
    n_rows, n_cols = _grid_shape(len(panels), 3)
    fig = make_subplots(rows=n_rows, cols=n_cols, subplot_titles=[t for t, _ in panels], horizontal_spacing=0.1,
                        vertical_spacing=0.22 / n_rows)
    for i, (_, trace) in enumerate(panels):
        r, c = i // n_cols + 1, i % n_cols + 1
        sp = fig.get_subplot(r, c)
        x1, (y0, y1) = sp.xaxis.domain[1], sp.yaxis.domain
        trace.colorbar = dict(x=x1 + 0.005, y=(y0 + y1) / 2, len=0.9 * (y1 - y0), thickness=10, xanchor="left")
        fig.add_trace(trace, row=r, col=c)
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False, autorange="reversed")
    fig.update_annotations(font_size=12)
    head = f"pair {k} · λ = {lam:g} · generator update {snap.get('update', '?')}"
    return _layout(fig, title or head, 300 * n_rows + 70)


# --------------------------------------------------------------------------- toy


def toy_figure(result: Any, *, title: str | None = None) -> go.Figure:
    """Decision regions of the toy (original, Retrain, unlearned without / with mixup) with the
    data points; the forgotten blob is drawn with red outlines."""
    names = [n for n in ("original", "retrain", "plain", "mixup") if n in result.panels]
    titles = []
    for n in names:
        m = result.metrics[n]
        titles.append(f"{result.PANEL_TITLES[n]}<br><sup>forget acc {m['forget_acc']:.0f}% · "
                      f"retain acc {m['retain_acc']:.1f}%</sup>")
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=titles, horizontal_spacing=0.03)
    n_cls = int(result.config["n_blobs"])
    light = ("#A6CEE3", "#FDBF6F", "#B2DF8A")
    colorscale = []
    for k in range(n_cls):
        colorscale += [[k / n_cls, light[k]], [(k + 1) / n_cls, light[k]]]
    f = result.forget_mask
    for p, name in enumerate(names):
        col = p + 1
        fig.add_trace(go.Heatmap(x=result.grid_x, y=result.grid_y, z=result.panels[name], zmin=-0.5,
                                 zmax=n_cls - 0.5, colorscale=colorscale, showscale=False, hoverinfo="skip"),
                      row=1, col=col)
        for part, mask in (("retained blobs", ~f), ("forgotten blob", f)):
            fig.add_trace(go.Scatter(
                x=result.x[mask, 0], y=result.x[mask, 1], mode="markers", name=part, legendgroup=part,
                showlegend=p == 0,
                marker=dict(size=5, color=[PALETTE[int(c)] for c in result.y[mask]],
                            line=dict(width=1.2 if part == "forgotten blob" else 0, color=FORGET_COLOUR)),
                hoverinfo="skip"), row=1, col=col)
        fig.update_xaxes(showticklabels=False, range=[float(result.grid_x[0]), float(result.grid_x[-1])],
                         row=1, col=col)
        fig.update_yaxes(showticklabels=False, range=[float(result.grid_y[0]), float(result.grid_y[-1])],
                         scaleanchor=f"x{col if col > 1 else ''}", row=1, col=col)
    fig.update_layout(legend=dict(orientation="h", y=-0.08))
    return _layout(fig, title, 380)


def toy_curves(logs: Mapping[str, Sequence[Mapping[str, float]]], *, title: str | None = None) -> go.Figure:
    fig = go.Figure()
    for j, (name, rows) in enumerate(logs.items()):
        for key in ("forget_ce", "regulariser"):
            pts = [(r["step"], r[key]) for r in rows if key in r]
            if pts:
                dash = "solid" if key == "forget_ce" else "dot"
                fig.add_trace(go.Scatter(x=[s for s, _ in pts], y=[v for _, v in pts], mode="lines",
                                         name=f"{name}: {key}", line=dict(color=PALETTE[j], dash=dash)))
    fig.update_xaxes(title_text="unlearning step")
    return _layout(fig, title, 300)


def figures_html(figs: Mapping[str, go.Figure], title: str = "MixUnlearn run") -> str:
    """One standalone HTML page holding several figures, with plotly.js embedded once (so the
    page opens offline)."""
    import html

    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head>"
             f"<body style='font-family:sans-serif'><h1>{html.escape(title)}</h1>"]
    for i, (name, fig) in enumerate(figs.items()):
        parts.append(f"<h2>{html.escape(name)}</h2>")
        parts.append(fig.to_html(include_plotlyjs=i == 0, full_html=False))
    parts.append("</body></html>")
    return "\n".join(parts)


# --------------------------------------------------------------------------- strong evaluation (issue 14)


def epsilon_histogram(eps_by_method: Mapping[str, Sequence[float]], n_models: int, *,
                      titles: Mapping[str, str] | None = None, width: float = 0.5, top: float = 10.0,
                      title: str | None = None) -> go.Figure:
    """Histogram of the per-example ε over the forget examples, one bar series per method: bins of
    ``width`` (the challenge's bucket width) from 0 to ``top``, and one last bin for ε ≥ ``top``
    (up to the cap, 50). A dashed line marks ⌈ln(N − 1)⌉, past which an example scores 0."""
    edges = np.arange(0.0, top + width / 2, width)
    centres = list(edges[:-1] + width / 2) + [top + width]
    labels = [f"[{a:g}, {b:g})" for a, b in zip(edges[:-1], edges[1:])] + [f"≥ {top:g}"]
    fig = go.Figure()
    for i, (name, eps) in enumerate(eps_by_method.items()):
        e = np.asarray(list(eps), dtype=np.float64)
        counts = [int(((e >= a) & (e < b)).sum()) for a, b in zip(edges[:-1], edges[1:])] + [int((e >= top).sum())]
        fig.add_bar(x=centres, y=counts, name=(titles or {}).get(name, name), customdata=labels,
                    marker_color=PALETTE[i % len(PALETTE)], width=width * 0.9 / max(1, len(eps_by_method)),
                    hovertemplate="%{fullData.name}<br>ε in %{customdata}: %{y} examples<extra></extra>")
    if n_models >= 3:
        limit = math.ceil(math.log(n_models - 1))
        fig.add_vline(x=limit, line_dash="dash", line_color="#555",
                      annotation_text=f"ε ≥ {limit}: 0 points (N = {n_models})", annotation_position="top right")
    ticks = list(edges[::2]) + [top + width]
    fig.update_layout(barmode="group", xaxis_title="ε per forget example (nats)", yaxis_title="forget examples",
                      xaxis=dict(tickvals=ticks, ticktext=[f"{t:g}" for t in edges[::2]] + ["≥ " + f"{top:g}"]),
                      legend_title_text="method")
    return _layout(fig, title, 380)


def confidence_distributions(groups: Mapping[str, Sequence[float]], *, title: str | None = None,
                             colours: Sequence[str] | None = None) -> go.Figure:
    """One forget example's logit-scaled confidences under each pool (e.g. the retrained and the
    unlearned models): overlaid histograms with every model as a tick underneath."""
    fig = go.Figure()
    colours = list(colours or (SET_COLOURS["retain"], FORGET_COLOUR, *PALETTE))
    values = [np.asarray(list(v), dtype=np.float64) for v in groups.values()]
    allv = np.concatenate(values) if values else np.zeros(1)
    lo, hi = float(allv.min()), float(allv.max())
    size = max((hi - lo) / 30, 1e-3)
    for i, (name, v) in enumerate(zip(groups, values)):
        c = colours[i % len(colours)]
        fig.add_histogram(x=v, name=f"{name} (N = {len(v)})", opacity=0.55, marker_color=c,
                          xbins=dict(start=lo - size, end=hi + size, size=size), legendgroup=name)
        fig.add_scatter(x=v, y=[-0.3 - 0.3 * i] * len(v), mode="markers", marker=dict(symbol="line-ns-open", size=14,
                                                                                       color=c),
                        showlegend=False, legendgroup=name, hovertemplate="%{x:.3f}<extra>" + name + "</extra>")
    fig.update_layout(barmode="overlay", xaxis_title="log p_y − log(1 − p_y) (logit-scaled confidence)",
                      yaxis_title="models")
    return _layout(fig, title, 340)


# --------------------------------------------------------------------------- where a model differs from Retrain


def _model_titles(names: Sequence[str], titles: Mapping[str, str] | None) -> list[str]:
    return [(titles or {}).get(n, n) for n in names]


def per_class_heatmap(per_class: Mapping[str, Mapping[str, float | None]], *, reference: str = "retrain",
                      titles: Mapping[str, str] | None = None, class_names: Sequence[str] | None = None,
                      forget_classes: Sequence[int] = (), title: str | None = None) -> go.Figure:
    """Methods x classes, each cell the model's test accuracy on that class, coloured by its
    difference to ``reference`` (Retrain): red below, blue above, white equal."""
    names = list(per_class)
    ref = per_class.get(reference, {})
    classes = sorted({int(c) for row in per_class.values() for c in row})
    cname = [class_names[c] if class_names and c < len(class_names) else str(c) for c in classes]
    cname = [f"{n} (D_f)" if c in set(forget_classes) else n for c, n in zip(classes, cname)]
    z, text = [], []
    for n in names:
        zr, tr = [], []
        for c in classes:
            v, r = per_class[n].get(str(c)), ref.get(str(c))
            d = None if v is None or r is None else float(v) - float(r)
            zr.append(d)
            tr.append("–" if v is None else f"{float(v):.0f}" + ("" if d is None else f"<br>({d:+.0f})"))
        z.append(zr)
        text.append(tr)
    lim = max([abs(v) for row in z for v in row if v is not None] + [1.0])
    fig = go.Figure(go.Heatmap(z=z, x=cname, y=_model_titles(names, titles), text=text, texttemplate="%{text}",
                               colorscale="RdBu", zmid=0, zmin=-lim, zmax=lim, xgap=1, ygap=1,
                               colorbar=dict(title="Δ to<br>Retrain"),
                               hovertemplate="%{y}, class %{x}: %{text}<extra></extra>"))
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(title_text="class, (D_f): in the forget set · test accuracy %, difference to "
                          "Retrain in brackets", type="category")
    return _layout(fig, title, 110 + 42 * len(names))


def prediction_matrices(matrices: Mapping[str, Sequence[Sequence[int]]], *, titles: Mapping[str, str] | None = None,
                        class_names: Sequence[str] | None = None, max_cols: int = 3,
                        title: str | None = None) -> go.Figure:
    """One true -> predicted matrix per model (rows: true class, share of its examples in %;
    the counts on hover), side by side on one colour scale."""
    from .diagnostics import row_normalised

    names = list(matrices)
    n_rows, n_cols = _grid_shape(len(names), max_cols)
    fig = make_subplots(rows=n_rows, cols=n_cols, subplot_titles=_model_titles(names, titles),
                        horizontal_spacing=0.06, vertical_spacing=0.12)
    for p, n in enumerate(names):
        m = np.asarray(matrices[n], dtype=float)
        k = len(m)
        labels = [class_names[c] if class_names and c < len(class_names) else str(c) for c in range(k)]
        share = row_normalised(m)
        fig.add_trace(go.Heatmap(z=share, x=labels, y=labels, customdata=m, zmin=0, zmax=100, colorscale="Blues",
                                 showscale=p == 0, colorbar=dict(title="% of<br>true class"),
                                 text=[[("" if not np.isfinite(v) or v < 0.5 else f"{v:.0f}") for v in row]
                                       for row in share], texttemplate="%{text}", textfont=dict(size=9),
                                 hovertemplate="true %{y} → predicted %{x}: %{customdata} (%{z:.1f} %)<extra></extra>"),
                      row=p // n_cols + 1, col=p % n_cols + 1)
    fig.update_yaxes(autorange="reversed", type="category", title_text="true")
    fig.update_xaxes(type="category", title_text="predicted")
    return _layout(fig, title, 340 * n_rows + 60)


def cka_chart(cka: Mapping[str, Mapping[str, Sequence[float | None]]], layers: Sequence[str], *,
              titles: Mapping[str, str] | None = None, title: str | None = None) -> go.Figure:
    """Layer-wise linear CKA of every model's block outputs to Retrain's (left) and to the
    original model's (right), one line per model."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("CKA to Retrain", "CKA to the original model"),
                        shared_yaxes=True, horizontal_spacing=0.05)
    for i, (n, parts) in enumerate(cka.items()):
        colour = PALETTE[i % len(PALETTE)]
        for col, key in ((1, "to_retrain"), (2, "to_original")):
            vals = list(parts.get(key) or [])
            fig.add_trace(go.Scatter(x=list(layers)[:len(vals)], y=vals, mode="lines+markers",
                                     name=(titles or {}).get(n, n), legendgroup=n, showlegend=col == 1,
                                     line=dict(color=colour, width=3 if n == "retrain" else 2)), row=1, col=col)
    fig.update_yaxes(title_text="linear CKA", row=1, col=1)
    fig.update_xaxes(title_text="block (input → output)", type="category")
    return _layout(fig, title, 380)


def attack_distributions(scores: Mapping[str, Mapping[str, Sequence[float]]], *, reference: str = "retrain",
                         titles: Mapping[str, str] | None = None, set_titles: Mapping[str, str] | None = None,
                         title: str | None = None) -> go.Figure:
    """The membership attack's score P(member) per example, one panel per example set and one box
    (with every example as a point) per model; Retrain's median is a dashed reference line."""
    names = list(scores)
    sets = list(next(iter(scores.values())).keys()) if names else []
    fig = make_subplots(rows=1, cols=max(1, len(sets)), shared_yaxes=True, horizontal_spacing=0.03,
                        subplot_titles=[(set_titles or {}).get(s, s) for s in sets])
    for j, s in enumerate(sets):
        for i, n in enumerate(names):
            v = np.asarray(scores[n][s], dtype=float)
            colour = "#444444" if n == reference else PALETTE[i % len(PALETTE)]
            fig.add_trace(go.Box(y=v, name=(titles or {}).get(n, n), marker_color=colour, boxpoints="all",
                                 jitter=0.5, pointpos=0, marker=dict(size=3, opacity=0.5), legendgroup=n,
                                 showlegend=j == 0, customdata=np.arange(len(v)),
                                 hovertemplate=f"{(titles or {}).get(n, n)} · example %{{customdata}}: "
                                               "%{y:.3f}<extra></extra>"), row=1, col=j + 1)
        if reference in scores and len(scores[reference][s]):
            fig.add_hline(y=float(np.nanmedian(np.asarray(scores[reference][s], dtype=float))), line_dash="dash",
                          line_color="#444444", row=1, col=j + 1)
    fig.update_yaxes(title_text="attack score P(member)", range=[-0.02, 1.02], row=1, col=1)
    fig.update_xaxes(showticklabels=False)
    return _layout(fig, title, 420)
