"""Plotly figures of runs, built from the read model (`app.read_model`). Pure: data in, figure out."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from app.read_model.progress import STAGE_TITLES
from app.read_model.series import Line
from app.read_model.trace import RunTrace, ema, epoch_axis, thin

MAX_POINTS = 2000  # per line; a browser draws this many quickly, and a long run is thinned to it
COLORS = {"teacher": "#334155", "student": "#4f46e5", "finetune": "#0d9488", "baseline": "#d97706"}
PART_COLORS = {"train_loss": "#111827", "train_ce": "#d97706", "train_kd": "#4f46e5", "train_feature": "#0d9488",
               "val_loss": "#dc2626"}  # the terms every method may record keep their colours on every chart
TERM_PALETTE = ["#db2777", "#65a30d", "#0891b2", "#9333ea", "#ca8a04", "#475569", "#ea580c", "#0f766e"]  # the rest
SOFT_COLORS = {"teacher_T1": "#cbd5e1", "teacher_T": "#334155", "student_T": "#6366f1"}
CLASS_COLORS = ["#4f46e5", "#d97706", "#0d9488", "#db2777", "#65a30d", "#0891b2", "#9333ea", "#dc2626", "#ca8a04",
                "#475569"]
MAX_BARS = 10  # classes drawn per sample; with more (cifar100) the teacher's top classes are shown
SAMPLES_PER_ROW = 5
PUBLISHED_COLOR = "#64748b"  # a paper's numbers: context behind the run's own curves


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


def term_colors(lines: list[Line]) -> dict[str, str]:
    """A colour per line: fixed ones for the common terms, the palette in drawing order for the others (so
    a method's terms keep their colours from stage to stage and run to run)."""
    others = [line.name for line in lines if line.name not in PART_COLORS]
    return {line.name: PART_COLORS.get(line.name) or TERM_PALETTE[others.index(line.name) % len(TERM_PALETTE)]
            for line in lines}


def _step_lines(fig: go.Figure, trace: RunTrace, stage: str, lines: list[Line], smoothing: float) -> None:
    colors = term_colors(lines)
    for line in lines:
        series = trace.get(stage, line.name)
        xs, ys = series.steps, series.values
        color = colors[line.name]
        if smoothing > 0:
            raw_x, raw_y = thin(xs, ys, MAX_POINTS)
            fig.add_trace(go.Scatter(x=raw_x, y=raw_y, mode="lines", line={"color": color, "width": 1},
                                     opacity=0.25, name=f"{line.label} (raw)", showlegend=False, hoverinfo="skip"))
            ys = ema(ys, smoothing)
        xs, ys = thin(xs, ys, MAX_POINTS)
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name=line.label,
                                 line={"color": color, "width": 2 if line.name == "train_loss" else 1.5}))


def loss_lines(trace: RunTrace, stage: str, method: str | None) -> list[Line]:
    """The stage's recorded loss terms, in the method's order and with its labels; terms that stay 0 (a
    weight of 0) are left out, the total never."""
    return [line for line in trace.step_lines(stage, method) if line.kind == "loss"
            and (line.name == "train_loss" or any(trace.get(stage, line.name).values))]


def value_lines(trace: RunTrace, stage: str, method: str | None) -> list[Line]:
    """The stage's recorded per-step values that are not losses (a learned temperature)."""
    return [line for line in trace.step_lines(stage, method) if line.kind == "value"]


def loss_figure(trace: RunTrace, stage: str, method: str | None = None, smoothing: float = 0.0) -> go.Figure:
    """Every loss term one stage recorded per step, labelled from the run's method, and validation CE per epoch."""
    fig = go.Figure()
    _step_lines(fig, trace, stage, loss_lines(trace, stage, method), smoothing)
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


def values_figure(trace: RunTrace, stage: str, lines: list[Line], smoothing: float = 0.0) -> go.Figure:
    """Per-step values a method learns (not losses; `value_lines`) on their own axis, e.g. CTKD's temperature."""
    fig = go.Figure()
    _step_lines(fig, trace, stage, lines, smoothing)
    title = lines[0].label[:1].upper() + lines[0].label[1:] if len(lines) == 1 else "Learned values"
    _layout(fig, f"{title} · {STAGE_TITLES.get(stage, stage)}", height=260,
            revision=f"values-{trace.run_id}-{stage}")
    if not fig.data:
        return _waiting(fig, "waiting for the first steps…")
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(title_text=lines[0].label if len(lines) == 1 else "value")
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


def accuracy_figure(trace: RunTrace, config: dict[str, Any], teacher_acc: float | None,
                    published: list[tuple[str, float]] | None = None) -> go.Figure:
    """Validation accuracy per epoch of student (and fine-tune, baseline); the teacher as a reference line.

    published: (label, test accuracy) of a paper's numbers for this setup (`kdcore.presets.Reference.lines`):
    a band from the published student alone to the published teacher, and a dotted line per number."""
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
    if published:
        _published_band(fig, published)
    fig.update_xaxes(title_text="epoch", range=_epoch_range(config), dtick=_epoch_dtick(config))
    values = [y for trace in fig.data for y in trace.y if y is not None and math.isfinite(y)]
    values += [acc for _, acc in published or []]
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    fig.update_yaxes(title_text="accuracy", tickformat=".0%",
                     range=[max(0.0, low - 0.05), min(1.01, high + 0.03)])  # never beyond 100%
    return fig


def _published_band(fig: go.Figure, published: list[tuple[str, float]]) -> None:
    """The paper's numbers behind the curves: the band between its student alone and its teacher, a line each."""
    accs = dict(published)
    if "student alone" in accs and "teacher" in accs:
        fig.add_hrect(y0=accs["student alone"], y1=accs["teacher"], fillcolor=PUBLISHED_COLOR, opacity=0.08,
                      line_width=0, layer="below")
    for label, acc in published:
        fig.add_hline(y=acc, line={"color": PUBLISHED_COLOR, "dash": "dot", "width": 1}, layer="below",
                      annotation={"text": f"published {label} {acc:.2%}", "font": {"size": 10, "color": PUBLISHED_COLOR}},
                      annotation_position="top left")


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


def soft_label_figure(teacher: dict[str, Any], student: dict[str, Any] | None, epoch: int | None, *,
                      title: str = "Soft labels of fixed validation samples") -> go.Figure:
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
    _layout(fig, title, height=(330 if images else 220) * sample_rows + 90,
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


# --- the Temperature lab --------------------------------------------------------------------------------------------


def temperature_curves_figure(curves: dict[str, list[float]], temperature: float, at_temperature: dict[str, float],
                              num_classes: int) -> go.Figure:
    """Mean entropy and dark knowledge of the teacher's soft labels against T (log axis), with their
    limits for T → ∞ and a marker at the chosen T."""
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.14,
                        subplot_titles=("mean entropy H(p) in nats", "dark knowledge: mean 1 − max p"))
    fig.update_annotations(font_size=12)
    limits = {"entropy": (math.log(num_classes), f"uniform: log {num_classes} = {math.log(num_classes):.2f}"),
              "dark_knowledge": ((num_classes - 1) / num_classes, f"uniform: {(num_classes - 1) / num_classes:.0%}")}
    xs = curves["temperature"]
    for col, (name, color) in enumerate((("entropy", COLORS["student"]), ("dark_knowledge", COLORS["finetune"])),
                                        start=1):
        limit, label = limits[name]
        fig.add_trace(go.Scatter(x=[xs[0], xs[-1]], y=[limit, limit], mode="lines", name=label, showlegend=False,
                                 line={"color": "#94a3b8", "dash": "dot", "width": 1}, hoverinfo="name"),
                      row=1, col=col)
        fig.add_trace(go.Scatter(x=xs, y=curves[name], mode="lines", name=name.replace("_", " "), showlegend=False,
                                 line={"color": color, "width": 2},
                                 hovertemplate="T = %{x:.2g}: %{y:.3f}<extra></extra>"), row=1, col=col)
        fig.add_trace(go.Scatter(x=[temperature], y=[at_temperature[name]], mode="markers+text", showlegend=False,
                                 name=f"T = {temperature:g}", text=[f"T = {temperature:g}"], textposition="top left",
                                 marker={"size": 11, "color": color, "line": {"width": 2, "color": "white"}},
                                 hovertemplate="T = %{x:g}: %{y:.3f}<extra></extra>"), row=1, col=col)
        axis = "" if col == 1 else str(col)
        fig.add_annotation(text=label, x=1, xref=f"x{axis} domain", y=limit, yref=f"y{axis}", xanchor="right",
                           yanchor="bottom", showarrow=False, font={"size": 10, "color": "#64748b"})
    ticks = [t for t in (0.25, 0.5, 1, 2, 4, 8, 16, 32, 64) if xs[0] <= t <= xs[-1]]
    fig.update_xaxes(type="log", title_text="temperature T", tickvals=ticks, ticktext=[f"{t:g}" for t in ticks])
    fig.update_yaxes(rangemode="tozero")
    fig.update_yaxes(tickformat=".0%", row=1, col=2)
    return _layout(fig, "The teacher's soft labels over the validation set vs T", height=340, revision="lab-curves")


def class_similarity_figure(matrix: list[list[float]], class_names: list[str], temperature: float) -> go.Figure:
    """S[a, b]: the share of the teacher's wrong-class probability that examples of class a give to b, at T."""
    classes = len(class_names)
    off_diagonal = [[None if a == b else value for b, value in enumerate(row)] for a, row in enumerate(matrix)]
    fig = go.Figure(go.Heatmap(
        z=off_diagonal, x=class_names, y=class_names, colorscale="Blues", zmin=0,
        colorbar={"tickformat": ".0%", "len": 0.8},
        texttemplate="%{z:.0%}" if classes <= 12 else None, textfont={"size": 10},
        hovertemplate="true %{y} → %{x}: %{z:.1%} of the wrong-class mass<extra></extra>"))
    fig.update_xaxes(type="category", title_text="class the teacher finds plausible", side="bottom")
    fig.update_yaxes(type="category", title_text="true class", autorange="reversed")
    return _layout(fig, f"Which wrong classes the teacher finds plausible · T = {temperature:g}",
                   height=max(340, min(900, 28 * classes + 140)), revision="lab-similarity")


# --- Compare ------------------------------------------------------------------------------------------------------

RUN_COLORS = ["#4f46e5", "#d97706", "#0d9488", "#db2777", "#65a30d", "#0891b2", "#9333ea", "#dc2626", "#ca8a04",
              "#475569"]


def compare_figure(series: dict[str, tuple[list[float], list[float]]], labels: dict[str, str], title: str, *,
                   x_title: str, y_title: str, smoothing: float = 0.0, percent: bool = False,
                   markers: bool = False) -> go.Figure:
    """One line per run (in the order of `labels`); with smoothing, the raw values stay faint."""
    fig = go.Figure()
    for i, run_id in enumerate(labels):
        if run_id not in series:
            continue
        xs, ys = series[run_id]
        color = RUN_COLORS[i % len(RUN_COLORS)]
        if smoothing > 0:
            raw_x, raw_y = thin(xs, ys, MAX_POINTS)
            fig.add_trace(go.Scatter(x=raw_x, y=raw_y, mode="lines", line={"color": color, "width": 1}, opacity=0.2,
                                     name=f"{labels[run_id]} (raw)", showlegend=False, hoverinfo="skip"))
            ys = ema(ys, smoothing)
        xs, ys = thin(xs, ys, MAX_POINTS)
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers" if markers else "lines", name=labels[run_id],
                                 line={"color": color, "width": 2}))
    _layout(fig, title, height=380, revision=f"compare-{title}", legend_below=True)
    if not fig.data:
        return _waiting(fig, "none of the selected runs reported this yet")
    fig.update_xaxes(title_text=x_title)
    fig.update_yaxes(title_text=y_title, tickformat=".0%" if percent else None)
    return fig


# --- Sweeps ---------------------------------------------------------------------------------------------------------


def value_label(value: Any) -> str:
    """A swept value as a tick label: 4.0 → 4, 0.5 → 0.5, names as they are."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def sweep_heatmap_figure(cells: list[dict[str, Any]], x_key: str, x_values: list, y_key: str | None,
                         y_values: list, metric_label: str, *, averaged_over: list[str] | None = None,
                         empty_text: str = "appears as runs of the sweep finish") -> go.Figure:
    """The mean of a metric over each (x, y) cell of a sweep (over seeds and the other swept keys,
    `averaged_over`), its standard deviation and run count on hover."""
    rows = y_values if y_key else [None]
    z = [[None] * len(x_values) for _ in rows]
    hover = [[""] * len(x_values) for _ in rows]
    for cell in cells:
        try:
            col = x_values.index(cell[x_key])
            row = rows.index(cell[y_key]) if y_key else 0
        except ValueError:
            continue
        z[row][col] = cell["mean"]
        runs = f"{cell['n']} run{'s' if cell['n'] != 1 else ''}"
        hover[row][col] = f"{cell['mean']:.1%} ± {cell['std']:.1%} (std over {runs})"
    fig = go.Figure(go.Heatmap(
        z=z, x=[value_label(v) for v in x_values], y=[value_label(v) for v in rows] if y_key else [metric_label],
        customdata=hover, colorscale="Viridis", texttemplate="%{z:.1%}", colorbar={"tickformat": ".0%"},
        hovertemplate=f"{x_key} = %{{x}}" + (f", {y_key} = %{{y}}" if y_key else "")
                      + ": %{customdata}<extra></extra>"))
    fig.update_xaxes(type="category", title_text=x_key)
    fig.update_yaxes(type="category", title_text=y_key or "", showticklabels=bool(y_key))
    title = (f"{metric_label} over {x_key}" + (f" × {y_key}" if y_key else "")
             + (f" · mean over {', '.join(averaged_over)}" if averaged_over else ""))
    _layout(fig, title, height=380 if y_key else 220, revision=f"sweep-heatmap-{x_key}-{y_key}")
    if not cells:
        return _waiting(fig, empty_text)
    return fig


def sweep_temperature_figure(lines: list[tuple[str, list[float], list[float], list[float]]],
                             references: list[tuple[str, float, float]], metric_label: str) -> go.Figure:
    """The metric against temperature, one line per value of the other swept key (label, Ts, means,
    stds), error bars one standard deviation; references (label, mean, std) as dashed lines."""
    fig = go.Figure()
    xs_all = sorted({x for _, xs, _, _ in lines for x in xs})
    colors = [c for c in RUN_COLORS if c not in (COLORS["baseline"], COLORS["teacher"])]  # those are the references
    for i, (label, xs, means, stds) in enumerate(lines):
        fig.add_trace(go.Scatter(x=xs, y=means, mode="lines+markers", name=label,
                                 error_y={"type": "data", "array": stds, "visible": True, "thickness": 1.2},
                                 line={"color": colors[i % len(colors)], "width": 2},
                                 hovertemplate="T = %{x:g}: %{y:.1%} ± %{error_y.array:.1%}"
                                               f"<extra>{label}</extra>"))
    styles = {"baseline": COLORS["baseline"], "teacher": COLORS["teacher"]}
    for label, mean, std in references:
        if xs_all:
            fig.add_trace(go.Scatter(x=[xs_all[0], xs_all[-1]], y=[mean, mean], mode="lines",
                                     name=f"{label} ({mean:.1%} ± {std:.1%})",
                                     line={"color": styles.get(label.split()[0], "#64748b"), "dash": "dash"},
                                     hoverinfo="name"))
    _layout(fig, f"{metric_label} vs temperature", height=380, revision="sweep-temperature", legend_below=True)
    if not lines:
        return _waiting(fig, "appears as runs of the sweep finish")
    fig.update_xaxes(title_text="temperature T", type="log" if len(xs_all) > 2 and xs_all[0] > 0 and
                     xs_all[-1] / xs_all[0] >= 8 else "linear", tickvals=xs_all, ticktext=[f"{x:g}" for x in xs_all])
    fig.update_yaxes(title_text=metric_label, tickformat=".0%")
    return fig


DEPLOY_COLORS = {"teacher": COLORS["teacher"], "fp32": COLORS["student"], "int8": COLORS["finetune"]}
TRADEOFF_TITLE = "Accuracy · size · latency trade-off"


def deploy_tradeoff_figure(points: list[dict[str, Any]]) -> go.Figure:
    """Two panels sharing the accuracy axis: accuracy vs ONNX file size, and accuracy vs ONNX Runtime latency
    at batch 1; each variant a labelled point, its Pareto frontier (nothing smaller or faster is as
    accurate) a dashed staircase. Points are `app.read_model.deploy.tradeoff_points`."""
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.06,
                        subplot_titles=("vs ONNX file size", "vs latency (ONNX Runtime, batch 1, p50)"))
    for col, (x_key, frontier) in enumerate((("size_kb", "pareto_size"), ("latency_ms", "pareto_latency")), start=1):
        for point in points:
            group = "teacher" if point["role"] == "teacher" else point["precision"]
            color = DEPLOY_COLORS.get(group, "#64748b")
            fig.add_trace(go.Scatter(
                x=[point[x_key]], y=[point["acc"]], mode="markers+text", text=[point["label"]], name=point["label"],
                textposition="top center", textfont={"size": 10}, showlegend=False, legendgroup=point["label"],
                marker={"size": 13 if point[frontier] else 9, "color": color, "symbol": "circle" if point[frontier]
                        else "circle-open", "line": {"width": 1.5, "color": color}},
                hovertemplate=(f"<b>{point['label']}</b><br>%{{y:.2f}}% · {point['size_kb']:.1f} KB · "
                               f"{point['latency_ms']:.3f} ms<extra></extra>")), row=1, col=col)
        front = sorted((p for p in points if p[frontier]), key=lambda p: p[x_key])
        if len(front) > 1:
            xs, ys = [], []
            for previous, point in zip(front, front[1:]):  # a staircase: the best accuracy at each cost
                xs += [previous[x_key], point[x_key]]
                ys += [previous["acc"], previous["acc"]]
            xs.append(front[-1][x_key])
            ys.append(front[-1]["acc"])
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name="Pareto frontier", showlegend=col == 1,
                                     line={"color": "#94a3b8", "dash": "dash", "width": 1.5}, hoverinfo="skip"),
                          row=1, col=col)
    _layout(fig, TRADEOFF_TITLE, height=440, revision="deploy-tradeoff", legend_below=True)
    if not points:
        return _waiting(fig, "appears when the report is computed")
    fig.update_xaxes(type="log", title_text="KB on disk (log)", row=1, col=1)
    fig.update_xaxes(type="log", title_text="ms per sample (log)", row=1, col=2)
    fig.update_yaxes(title_text="test accuracy (%)", row=1, col=1)
    return fig


# --- tuning studies (app.read_model.tune) -------------------------------------------------------------------------

# a running trial is drawn at its best validation accuracy so far, hollow: it moves as it trains
TRIAL_COLORS = {"complete": COLORS["student"], "running": COLORS["student"], "pruned": "#94a3b8", "failed": "#dc2626",
                "cancelled": "#64748b"}
TRIAL_SYMBOLS = {"complete": "circle", "running": "circle-open", "pruned": "x", "failed": "triangle-down",
                 "cancelled": "square"}


def tune_progress_figure(points: list[dict[str, Any]], best: list[tuple[int, float]]) -> go.Figure:
    """Each trial's validation accuracy by trial number (pruned ones: their best before the stop; running ones:
    their best so far), and the best complete trial so far as a step line."""
    fig = go.Figure()
    for state in TRIAL_COLORS:
        mine = [p for p in points if p["state"] == state]
        if mine:
            fig.add_trace(go.Scatter(x=[p["number"] for p in mine], y=[p["y"] for p in mine], mode="markers",
                                     name=state, customdata=[p["run_id"] for p in mine],
                                     marker={"color": TRIAL_COLORS[state], "symbol": TRIAL_SYMBOLS[state], "size": 9},
                                     hovertemplate="trial #%{x}: %{y:.2%} (%{customdata})<extra>" + state + "</extra>"))
    if best:
        fig.add_trace(go.Scatter(x=[n for n, _ in best], y=[b for _, b in best], mode="lines", name="best so far",
                                 line={"color": COLORS["finetune"], "shape": "hv", "width": 2},
                                 hovertemplate="after trial #%{x}: best %{y:.2%}<extra></extra>"))
    _layout(fig, "Validation accuracy by trial", height=340, revision="tune-progress", legend_below=True)
    if not points:
        return _waiting(fig, "appears as trials finish")
    fig.update_xaxes(title_text="trial", dtick=1 if len(points) <= 20 else None)
    fig.update_yaxes(title_text="validation accuracy", tickformat=".1%")
    return fig


def tune_param_figure(points: list[dict[str, Any]], key: str, *, log: bool = False) -> go.Figure:
    """Validation accuracy against one searched setting, a marker per trial (colour and shape by its state)."""
    fig = go.Figure()
    for state in TRIAL_COLORS:
        mine = [p for p in points if p["state"] == state]
        if mine:
            fig.add_trace(go.Scatter(
                x=[p["x"] for p in mine], y=[p["y"] for p in mine], mode="markers", name=state, showlegend=False,
                customdata=[[p["number"], p["epochs"]] for p in mine],
                marker={"color": TRIAL_COLORS[state], "symbol": TRIAL_SYMBOLS[state], "size": 9},
                hovertemplate=f"{key} = %{{x}}: %{{y:.2%}} (trial #%{{customdata[0]}}, %{{customdata[1]}} epochs)"
                              f"<extra>{state}</extra>"))
    _layout(fig, f"val acc vs {key}", height=280, revision=f"tune-param-{key}")
    if not points:
        return _waiting(fig, "appears as trials finish")
    numeric = all(isinstance(p["x"], (int, float)) and not isinstance(p["x"], bool) for p in points)
    fig.update_xaxes(title_text=key, type="log" if log and numeric else "linear" if numeric else "category")
    fig.update_yaxes(title_text="val acc", tickformat=".1%")
    return fig


def tune_parallel_figure(dimensions: list[dict[str, Any]], accuracy: list[float]) -> go.Figure:
    """Parallel coordinates of the complete trials: one axis per searched setting, then validation accuracy; a
    line per trial coloured by its accuracy (brush an axis to filter)."""
    columns = []
    for dim in dimensions:
        column = {"label": dim["label"], "values": dim["values"]}
        if "ticks" in dim:
            column.update(tickvals=list(range(len(dim["ticks"]))), ticktext=dim["ticks"],
                          range=[-1, len(dim["ticks"])])
        elif dim.get("log") and min(dim["values"]) > 0:  # plotly has no log axis here: draw log10 with real ticks
            logs = [math.log10(v) for v in dim["values"]]
            ticks = sorted({round(v, 3) for v in dim["values"]})
            column.update(values=logs, tickvals=[math.log10(v) for v in ticks], ticktext=[f"{v:g}" for v in ticks],
                          label=f"{dim['label']} (log)")
        columns.append(column)
    fig = go.Figure(go.Parcoords(dimensions=columns, line={"color": accuracy or [0], "colorscale": "Viridis",
                                                           "showscale": bool(accuracy)}) if columns else None)
    _layout(fig, "Complete trials, every setting at once", height=340, revision="tune-parallel")
    fig.update_layout(margin={"l": 60, "r": 60, "t": 80, "b": 20})
    if not accuracy:
        return _waiting(fig, "appears as trials complete")
    return fig


def tune_importance_figure(importance: dict[str, float]) -> go.Figure:
    """fANOVA importance of each searched setting for validation accuracy (Optuna's; sums to 1)."""
    items = sorted(importance.items(), key=lambda kv: kv[1])
    fig = go.Figure(go.Bar(x=[v for _, v in items], y=[k for k, _ in items], orientation="h",
                           marker={"color": COLORS["student"]}, texttemplate="%{x:.0%}",
                           hovertemplate="%{y}: %{x:.1%} of the variance explained<extra></extra>"))
    _layout(fig, "Which settings matter (fANOVA importance)", height=80 + 40 * max(len(items), 2),
            revision="tune-importance")
    if not items:
        return _waiting(fig, "appears once 3 trials complete")
    fig.update_xaxes(tickformat=".0%", range=[0, 1])
    return fig
