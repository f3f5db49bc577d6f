"""Plotly figures of one run, built from a `kdcore.views.RunTrace`. Pure: data in, figure out."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from kdcore.views import STAGE_TITLES, STEP_METRICS, RunTrace, ema, epoch_axis, thin

MAX_POINTS = 2000  # per line; a browser draws this many quickly, and a long run is thinned to it
COLORS = {"teacher": "#334155", "student": "#4f46e5", "finetune": "#0d9488", "baseline": "#d97706"}
PART_COLORS = {"train_loss": "#111827", "train_ce": "#d97706", "train_kd": "#4f46e5", "train_feature": "#0d9488",
               "val_loss": "#dc2626"}
PART_NAMES = {"train_loss": "total", "train_ce": "CE", "train_kd": "KD (T²·KL)", "train_feature": "feature (MSE)"}
SOFT_COLORS = {"teacher_T1": "#cbd5e1", "teacher_T": "#334155", "student_T": "#6366f1"}
CLASS_COLORS = ["#4f46e5", "#d97706", "#0d9488", "#db2777", "#65a30d", "#0891b2", "#9333ea", "#dc2626", "#ca8a04",
                "#475569"]
MAX_BARS = 10  # classes drawn per sample; with more (cifar100) the teacher's top classes are shown
SAMPLES_PER_ROW = 5


def _layout(fig: go.Figure, title: str, *, height: int, revision: str, legend_below: bool = False) -> go.Figure:
    legend = ({"orientation": "h", "yanchor": "top", "y": -0.22, "xanchor": "left", "x": 0} if legend_below else
              {"orientation": "h", "yanchor": "bottom", "y": 1.0, "xanchor": "right", "x": 1})
    fig.update_layout(title={"text": title, "x": 0, "xanchor": "left", "font": {"size": 15}}, height=height,
                      margin={"l": 10, "r": 10, "t": 60, "b": 10}, legend=legend,
                      uirevision=revision)  # keeps the viewer's zoom while new points arrive
    return fig


def _waiting(fig: go.Figure, text: str) -> go.Figure:
    fig.add_annotation(text=text, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5,
                       font={"color": "#64748b"})
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return fig


# --- losses ----------------------------------------------------------------------------------------------


def loss_figure(trace: RunTrace, stage: str, smoothing: float = 0.0) -> go.Figure:
    """Per-step loss parts of one stage (parts that stay 0 are left out), and validation CE per epoch."""
    fig = go.Figure()
    for name in STEP_METRICS:
        series = trace.get(stage, name)
        if not series.values or (name != "train_loss" and not any(series.values)):
            continue
        xs, ys = series.steps, series.values
        color = PART_COLORS[name]
        if smoothing > 0:
            raw_x, raw_y = thin(xs, ys, MAX_POINTS)
            fig.add_trace(go.Scatter(x=raw_x, y=raw_y, mode="lines", line={"color": color, "width": 1},
                                       opacity=0.25, name=f"{PART_NAMES[name]} (raw)", showlegend=False,
                                       hoverinfo="skip"))
            ys = ema(ys, smoothing)
        xs, ys = thin(xs, ys, MAX_POINTS)
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name=PART_NAMES[name],
                                   line={"color": color, "width": 2 if name == "train_loss" else 1.5}))
    val = trace.get(stage, "val_loss")
    if val.values:
        fig.add_trace(go.Scatter(x=val.steps, y=val.values, mode="lines+markers", name="validation CE",
                                 line={"color": PART_COLORS["val_loss"], "dash": "dot"}))
    _layout(fig, f"Training loss · {STAGE_TITLES.get(stage, stage)}", height=360,
            revision=f"loss-{trace.run_id}-{stage}")
    if not fig.data:
        return _waiting(fig, "waiting for the first steps…")
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(title_text="loss", rangemode="tozero")
    return fig


# --- accuracy, agreement ---------------------------------------------------------------------------------------


def _epoch_lines(fig: go.Figure, trace: RunTrace, config: dict[str, Any], name: str, **where) -> None:
    for stage in ("student", "finetune", "baseline"):
        series = trace.get(stage, name)
        if series.values:
            fig.add_trace(go.Scatter(x=epoch_axis(stage, series.epochs, config), y=series.values, mode="lines+markers",
                                     name=STAGE_TITLES[stage].lower(), line={"color": COLORS[stage]},
                                     legendgroup=stage, showlegend=not where or where.get("col") == 1), **where)


def _epoch_range(config: dict[str, Any]) -> list[float]:
    last = int(config.get("epochs") or 1) + int(config.get("finetune_epochs") or 0)
    return [0.5, last + 0.5]


def _epoch_dtick(config: dict[str, Any]) -> int | None:
    """Whole epochs on the axis: every one for short runs, plotly's choice (integers) beyond 20."""
    return 1 if _epoch_range(config)[1] <= 20 else None


def accuracy_figure(trace: RunTrace, config: dict[str, Any], teacher_acc: float | None) -> go.Figure:
    """Validation accuracy per epoch of student (and fine-tune, baseline); the teacher as a reference line."""
    fig = go.Figure()
    _epoch_lines(fig, trace, config, "val_acc")
    if teacher_acc is not None:
        x0, x1 = _epoch_range(config)
        fig.add_trace(go.Scatter(x=[x0, x1], y=[teacher_acc, teacher_acc], mode="lines",
                                 name=f"teacher ({teacher_acc:.1%})", line={"color": COLORS["teacher"], "dash": "dash"},
                                 hoverinfo="name"))
    _layout(fig, "Validation accuracy per epoch", height=360, revision=f"acc-{trace.run_id}", legend_below=True)
    if not fig.data:
        return _waiting(fig, "accuracy appears after the student's first epoch")
    fig.update_xaxes(title_text="epoch", range=_epoch_range(config), dtick=_epoch_dtick(config))
    values = [y for trace in fig.data for y in trace.y if y is not None and math.isfinite(y)]
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    fig.update_yaxes(title_text="accuracy", tickformat=".0%",
                     range=[max(0.0, low - 0.05), min(1.01, high + 0.03)])  # never beyond 100%
    return fig


def agreement_figure(trace: RunTrace, config: dict[str, Any]) -> go.Figure:
    """How closely each model follows the teacher on validation: top-1 agreement and KL at T."""
    temperature = config.get("temperature")
    kl_title = "KL(teacher ‖ model)" + (f" at T={temperature:g}" if isinstance(temperature, (int, float)) else "")
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.12, subplot_titles=("top-1 agreement", kl_title))
    _epoch_lines(fig, trace, config, "val_agreement", row=1, col=1)
    _epoch_lines(fig, trace, config, "val_kl", row=1, col=2)
    _layout(fig, "Teacher–student agreement", height=360, revision=f"agree-{trace.run_id}", legend_below=True)
    if not fig.data:
        return _waiting(fig, "agreement appears after the student's first epoch")
    fig.update_xaxes(title_text="epoch", range=_epoch_range(config), dtick=_epoch_dtick(config))
    fig.update_yaxes(tickformat=".0%", row=1, col=1)
    fig.update_annotations(font_size=12)
    fig.update_yaxes(rangemode="tozero", row=1, col=2)
    return fig


# --- soft labels --------------------------------------------------------------------------------------------


def _image_rgb(image: list) -> np.ndarray:
    """[C, H, W] floats in 0..1 → [H, W, 3] uint8 (grey images repeated over 3 channels)."""
    array = np.asarray(image, dtype=np.float32)
    array = np.repeat(array, 3, axis=0) if array.shape[0] == 1 else array[:3]
    return (np.clip(array, 0, 1).transpose(1, 2, 0) * 255).round().astype(np.uint8)


def _classes_shown(probabilities: list[float]) -> list[int]:
    if len(probabilities) <= MAX_BARS:
        return list(range(len(probabilities)))
    return sorted(np.argsort(probabilities)[::-1][:MAX_BARS].tolist())


def soft_label_figure(teacher: dict[str, Any], student: dict[str, Any] | None, epoch: int | None) -> go.Figure:
    """For each fixed validation sample: the teacher's distribution at T=1 and at T, and the student's at T.

    Image sets show each image above its bars; 2-D sets number the samples (see `regions_figure`).
    """
    count = len(teacher["teacher_T"])
    names = teacher.get("class_names") or [str(i) for i in range(len(teacher["teacher_T"][0]))]
    labels = teacher.get("labels") or [None] * count
    temperature = teacher.get("temperature")
    images = teacher.get("images")
    cols = min(SAMPLES_PER_ROW, count)
    sample_rows = math.ceil(count / cols)
    rows = sample_rows * (2 if images else 1)
    heights = [0.4, 0.6] * sample_rows if images else None
    titles = []
    for r in range(sample_rows):
        chunk = range(r * cols, min((r + 1) * cols, count))
        row_titles = [f"#{i + 1} · {names[labels[i]] if labels[i] is not None else '?'}" for i in chunk]
        row_titles += [""] * (cols - len(row_titles))
        titles += row_titles + ([""] * cols if images else [])
    fig = make_subplots(rows=rows, cols=cols, row_heights=heights, subplot_titles=titles,
                        vertical_spacing=0.075 if images else 0.12, horizontal_spacing=0.03)
    series = [("teacher_T1", "teacher, T=1", teacher["teacher_T1"]),
              ("teacher_T", f"teacher, T={temperature:g}" if temperature else "teacher, T", teacher["teacher_T"])]
    if student is not None:
        series.append(("student_T", f"student, T={temperature:g}, epoch {epoch}", student["student_T"]))
    for i in range(count):
        r, c = divmod(i, cols)
        bar_row = r * 2 + 2 if images else r + 1
        if images:
            fig.add_trace(go.Image(z=_image_rgb(images[i]), hoverinfo="skip"), row=r * 2 + 1, col=c + 1)
        shown = _classes_shown(teacher["teacher_T"][i])
        for key, label, values in series:
            fig.add_trace(go.Bar(x=[names[k] for k in shown], y=[values[i][k] for k in shown], name=label,
                                 marker_color=SOFT_COLORS[key], legendgroup=key, showlegend=i == 0,
                                 hovertemplate="%{x}: %{y:.3f}<extra>" + label + "</extra>"),
                          row=bar_row, col=c + 1)
    fig.update_layout(barmode="group", bargap=0.15, bargroupgap=0.0)
    # one probability scale for every sample, fitted to the largest bar: flat distributions stay readable
    top = max((p for _, _, values in series for row in values for p in row), default=1.0)
    y_range = [0, min(1.0, max(0.25, top * 1.1))]
    for r in range(sample_rows):
        bar_row = r * 2 + 2 if images else r + 1
        fig.update_xaxes(type="category", tickfont={"size": 9}, row=bar_row)
        fig.update_yaxes(range=y_range, showticklabels=False, row=bar_row)
        fig.update_yaxes(showticklabels=True, tickformat=".0%", tickfont={"size": 9}, row=bar_row, col=1)
        if images:
            fig.update_xaxes(visible=False, row=r * 2 + 1)
            fig.update_yaxes(visible=False, row=r * 2 + 1)
    fig.update_annotations(font_size=11)
    _layout(fig, "Soft labels of fixed validation samples", height=(330 if images else 220) * sample_rows + 90,
            revision=f"soft-{teacher.get('id')}")
    fig.update_layout(legend={"orientation": "h", "yanchor": "bottom", "y": 1.04, "xanchor": "left", "x": 0},
                      margin={"t": 100})
    return fig


def _discrete_scale(classes: int) -> list[list]:
    scale = []
    for k in range(classes):
        color = CLASS_COLORS[k % len(CLASS_COLORS)]
        scale += [[k / classes, color], [(k + 1) / classes, color]]
    return scale


def regions_figure(teacher: dict[str, Any], student: dict[str, Any] | None, epoch: int | None) -> go.Figure:
    """Decision regions of teacher and student side by side (2-D sets), with the validation points."""
    classes = len(teacher.get("class_names") or []) or (max(max(row) for row in teacher["teacher_regions"]) + 1)
    panels = [("teacher", teacher["teacher_regions"])]
    panels.append((f"student · epoch {epoch}", student["student_regions"]) if student and "student_regions" in student
                  else ("student · not trained yet", None))
    fig = make_subplots(rows=1, cols=2, subplot_titles=[title for title, _ in panels], horizontal_spacing=0.06)
    grid = teacher["grid"]
    points = np.asarray(teacher["points"])
    point_labels = teacher["point_labels"]
    highlight = np.asarray(teacher["highlight"])
    for col, (_, regions) in enumerate(panels, start=1):
        if regions is not None:
            fig.add_trace(go.Heatmap(z=regions, x=grid["x"], y=grid["y"], colorscale=_discrete_scale(classes),
                                     zmin=-0.5, zmax=classes - 0.5, showscale=False, opacity=0.35, hoverinfo="skip"),
                          row=1, col=col)
        fig.add_trace(go.Scatter(x=points[:, 0], y=points[:, 1], mode="markers", showlegend=False, hoverinfo="skip",
                                   marker={"size": 4, "line": {"width": 0},
                                           "color": [CLASS_COLORS[k % len(CLASS_COLORS)] for k in point_labels]}),
                      row=1, col=col)
        fig.add_trace(go.Scatter(x=highlight[:, 0], y=highlight[:, 1], mode="markers+text", showlegend=False,
                                 text=[f"#{i + 1}" for i in range(len(highlight))], textposition="top center",
                                 textfont={"size": 10}, hovertemplate="#%{text}<extra></extra>",
                                 marker={"size": 9, "color": "white", "line": {"width": 2, "color": "#111827"}}),
                      row=1, col=col)
    fig.update_xaxes(range=[grid["x"][0], grid["x"][-1]], showticklabels=False, showgrid=False, zeroline=False)
    fig.update_yaxes(range=[grid["y"][0], grid["y"][-1]], showticklabels=False, showgrid=False, zeroline=False)
    return _layout(fig, "Decision regions", height=380, revision=f"regions-{teacher.get('id')}")
