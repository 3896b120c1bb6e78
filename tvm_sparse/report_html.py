"""The sparsity report as one self-contained HTML page: plots as inline SVG, the table, the notes.

Why one file that fetches nothing (no script, no CDN, no web font): the page is attached to CI
runs and opened from disk on machines without a network, and it must look the same years later.
Everything drawn is computed here in Python, from the report's JSON form (``Report.to_dict()``),
so a report saved as JSON by an older run renders too (without heatmaps: it has no weight maps).
This module does not import ``report`` (``Report.to_html`` imports it): it reads plain dicts.

Every string a model controls (its file name, layer names, notes, kernel names) reaches the page
through ``safe_text.html_text``, tooltips included: the SVG helpers below take raw text and
escape it themselves, so no caller can forget.
"""

from __future__ import annotations

import base64
import math
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .formats.weight_map import coarse_map, corner_mask
from .safe_text import html_text, short_name

# colours: dense is the baseline (grey), sparse what the compiler did (blue / orange)
DENSE = "#9aa0a6"
WEIGHT_SPARSE = "#4c72b0"
SPARSE_SPARSE = "#55a868"
CHOSEN = "#dd8452"
ACTIVATION = "#55a868"
MASK_ON = "#1f2a44"

LABEL_CHARS = 26  # x-axis layer names are cut to this many characters
CHAR_W = 6.2  # px per character of the 11 px sans-serif labels (an upper estimate)
LABEL_ANGLE = 60  # degrees the x-axis names are turned


# --------------------------------------------------------------------------------------------
# numbers
# --------------------------------------------------------------------------------------------
def _si(value: float) -> str:
    """1234567 -> "1.23M": MAC counts span six orders of magnitude across a model."""
    for factor, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= factor:
            return f"{value / factor:.3g}{suffix}"
    return f"{value:.3g}"


def _ms(value: float) -> str:
    """A time in ms, in µs below 0.1 ms (tiny layers run in microseconds)."""
    return f"{value * 1e3:.3g} µs" if value < 0.1 else f"{value:.3g} ms"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _speedup(value: float) -> str:
    return f"{value:.2f}×" if value < 10 else f"{value:.1f}×"


# --------------------------------------------------------------------------------------------
# timings
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerTime:
    """A layer's dense and chosen-kernel times (ms) and where each came from ("measured" or
    "estimated"; None: no timing). The speedup needs both from one source: a measured time
    against a cost-model estimate compares two different things."""

    dense_ms: float | None
    dense_source: str | None
    chosen_ms: float | None
    chosen_source: str | None

    @property
    def speedup(self) -> float | None:
        if self.dense_ms is None or not self.chosen_ms or self.dense_source != self.chosen_source:
            return None
        return self.dense_ms / self.chosen_ms


def _timed(layer: dict, key: str) -> tuple[float | None, str | None]:
    """The time of candidate ``key``: measured when it was timed, else estimated."""
    for source in ("measured", "estimated"):
        times = layer.get(f"{source}_ms") or {}
        if times.get(key) is not None:
            return float(times[key]), source
    return None, None


def layer_time(layer: dict) -> LayerTime:
    """Dense vs chosen time of one report layer (a ``LayerReport.to_dict()`` row): both
    measured when both were, else both estimated, else each from wherever it is."""
    chosen = layer.get("chosen", "")
    for source in ("measured", "estimated"):
        times = layer.get(f"{source}_ms") or {}
        if times.get("dense") is not None and times.get(chosen) is not None:
            return LayerTime(float(times["dense"]), source, float(times[chosen]), source)
    return LayerTime(*_timed(layer, "dense"), *_timed(layer, chosen))


@dataclass(frozen=True)
class TotalTime:
    """Sums over the layers whose speedup is known (both times from one source)."""

    dense_ms: float
    chosen_ms: float
    layers: int
    sources: tuple[str, ...]

    @property
    def speedup(self) -> float:
        return self.dense_ms / self.chosen_ms if self.chosen_ms else float("nan")


def total_time(layers: Sequence[dict]) -> TotalTime | None:
    """Whole-model dense vs chosen time, or None when no layer has both."""
    timed = [t for t in map(layer_time, layers) if t.speedup is not None]
    if not timed:
        return None
    return TotalTime(
        dense_ms=sum(t.dense_ms for t in timed),
        chosen_ms=sum(t.chosen_ms for t in timed),
        layers=len(timed),
        sources=tuple(sorted({t.dense_source for t in timed})),
    )


def _total_text(total: TotalTime | None, n_layers: int) -> str:
    if total is None:
        return "no layer has both a dense and a chosen-kernel time"
    return (
        f"total over {total.layers} of {_count(n_layers, 'layer')} ({' / '.join(total.sources)}): "
        f"dense {_ms(total.dense_ms)}, chosen {_ms(total.chosen_ms)}: "
        f"{_speedup(total.speedup)} faster"
    )


# --------------------------------------------------------------------------------------------
# SVG primitives: raw text in, escaped markup out
# --------------------------------------------------------------------------------------------
def _f(v: float) -> str:
    """Coordinates to 0.1 px: enough for a screen, half the bytes of repr."""
    return f"{v:.1f}".rstrip("0").rstrip(".")


def _tip(text: str | None) -> str:
    """A hover tooltip (an SVG ``<title>`` child)."""
    return "" if text is None else f"<title>{html_text(text)}</title>"


def _rect(x, y, w, h, fill: str, tip: str | None = None, cls: str = "") -> str:
    attrs = f'x="{_f(x)}" y="{_f(y)}" width="{_f(w)}" height="{_f(h)}" fill="{fill}"'
    attrs += f' class="{cls}"' if cls else ""
    return f"<rect {attrs}>{_tip(tip)}</rect>" if tip else f"<rect {attrs}/>"


def _text(x, y, text: str, cls: str = "", anchor: str = "start", rotate: float = 0) -> str:
    turn = f' transform="rotate({_f(rotate)} {_f(x)} {_f(y)})"' if rotate else ""
    klass = f' class="{cls}"' if cls else ""
    return (
        f'<text x="{_f(x)}" y="{_f(y)}" text-anchor="{anchor}"{klass}{turn}>'
        f"{html_text(text)}</text>"
    )


def _line(x1, y1, x2, y2, cls: str) -> str:
    return f'<line x1="{_f(x1)}" y1="{_f(y1)}" x2="{_f(x2)}" y2="{_f(y2)}" class="{cls}"/>'


def _heading_width(title: str, subtitle: str) -> float:
    """The width a plot needs for its title (15 px bold) and the line under it (12 px)."""
    return 24 + max(len(title) * 8.6, len(subtitle) * 6.6)


def _svg(width: float, height: float, cls: str, label: str, body: Sequence[str]) -> str:
    """An inline SVG; ``cls`` names the plot kind (the tests find the plots by it)."""
    w, h = math.ceil(width), math.ceil(height)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="plot {cls}" width="{w}" '
        f'height="{h}" viewBox="0 0 {w} {h}" role="img" aria-label="{html_text(label)}">'
        + "".join(body)
        + "</svg>"
    )


@dataclass(frozen=True)
class LegendItem:
    label: str
    colour: str
    cls: str = ""  # "faded": the pale, dashed style of assumed or estimated values


def _legend(x: float, y: float, items: Sequence[LegendItem]) -> str:
    """One row of swatches and labels; widths estimated from the label length."""
    out = []
    for item in items:
        out.append(_rect(x, y - 9, 12, 12, item.colour, cls=item.cls))
        out.append(_text(x + 17, y + 1, item.label, "legend"))
        x += 17 + len(item.label) * CHAR_W + 18
    return "".join(out)


def _legend_width(items: Sequence[LegendItem]) -> float:
    return sum(17 + len(item.label) * CHAR_W + 18 for item in items)


# --------------------------------------------------------------------------------------------
# axes and the per-layer frame
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Axis:
    """Maps a value to a height fraction in [0, 1] (linear from 0, or log10) and places ticks."""

    lo: float
    hi: float
    log: bool = False

    def frac(self, value: float) -> float:
        if self.log:
            if value <= self.lo:
                return 0.0
            span = math.log10(self.hi) - math.log10(self.lo)
            return min(1.0, (math.log10(value) - math.log10(self.lo)) / span)
        return min(1.0, max(0.0, (value - self.lo) / (self.hi - self.lo)))

    def ticks(self) -> list[float]:
        if self.log:
            first, last = round(math.log10(self.lo)), round(math.log10(self.hi))
            step = max(1, math.ceil((last - first) / 8))  # at most ~8 decades labelled
            return [10.0**e for e in range(first, last + 1, step)]
        step = _nice_step(self.hi / 5)
        return [i * step for i in range(int(round(self.hi / step)) + 1)]


def _nice_step(raw: float) -> float:
    """The smallest 1, 2, 2.5 or 5 x 10^k at least ``raw``: ticks people can read."""
    if raw <= 0:
        return 1.0
    magnitude = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if m * magnitude >= raw * (1 - 1e-9):
            return m * magnitude
    return 10 * magnitude


def linear_axis(values: Sequence[float | None]) -> Axis:
    """0 up to a round number at or above the largest value."""
    top = max([v for v in values if v is not None] + [0.0])
    if top <= 0:
        return Axis(0.0, 1.0)
    step = _nice_step(top / 5)
    return Axis(0.0, math.ceil(top / step * (1 - 1e-9)) * step)


def log_axis(values: Sequence[float | None]) -> Axis:
    """Whole decades around the positive values (MACs differ by 1000x between layers)."""
    positive = [v for v in values if v is not None and v > 0] or [1.0]
    lo = 10.0 ** math.floor(math.log10(min(positive)))
    hi = 10.0 ** math.ceil(math.log10(max(positive)))
    return Axis(lo, hi if hi > lo else lo * 10, log=True)


@dataclass(frozen=True)
class Frame:
    """The geometry of a per-layer chart: one slot per layer along x, the names turned under
    it. 54 layers of a ResNet-50 get 20 px each (the page scrolls sideways), 4 layers 110."""

    labels: tuple[str, ...]
    top: float = 86
    plot_h: float = 240
    right: float = 24

    @property
    def slot(self) -> float:
        return max(20.0, min(110.0, 900.0 / max(len(self.labels), 1)))

    @property
    def left(self) -> float:
        """Room for the y axis, and for the first names, whose turned text reaches left."""
        cos = math.cos(math.radians(LABEL_ANGLE))
        reach = max(
            (len(s) * CHAR_W * cos - (i + 0.5) * self.slot for i, s in enumerate(self.labels)),
            default=0.0,
        )
        return max(72.0, reach + 8)

    @property
    def bottom(self) -> float:
        longest = max((len(s) for s in self.labels), default=0)
        return 24 + longest * CHAR_W * math.sin(math.radians(LABEL_ANGLE))

    @property
    def width(self) -> float:
        return self.left + self.slot * len(self.labels) + self.right

    @property
    def height(self) -> float:
        return self.top + self.plot_h + self.bottom

    @property
    def base(self) -> float:
        return self.top + self.plot_h

    def x(self, i: int) -> float:
        return self.left + i * self.slot

    def y(self, frac: float) -> float:
        return self.top + self.plot_h * (1 - frac)


def _y_axis(frame: Frame, axis: Axis, label: str, fmt: Callable[[float], str]) -> str:
    """Grid lines and tick labels across the plot, the axis title turned along it."""
    out = []
    for tick in axis.ticks():
        y = frame.y(axis.frac(tick))
        out.append(_line(frame.left, y, frame.left + frame.slot * len(frame.labels), y, "grid"))
        out.append(_text(frame.left - 6, y + 4, fmt(tick), "tick", "end"))
    out.append(_line(frame.left, frame.top, frame.left, frame.base, "axis"))
    mid = frame.top + frame.plot_h / 2
    out.append(_text(16, mid, label, "axis-title", "middle", rotate=-90))
    return "".join(out)


def _x_names(frame: Frame, full_names: Sequence[str]) -> str:
    """Layer names under their slots, turned; the full name is the tooltip."""
    out = [_line(frame.left, frame.base, frame.x(len(frame.labels)), frame.base, "axis")]
    for i, (label, full) in enumerate(zip(frame.labels, full_names)):
        cx = frame.x(i) + frame.slot / 2
        out.append(
            f'<g class="layer-name">{_tip(full)}'
            + _text(cx + 3, frame.base + 12, label, "name", "end", rotate=-LABEL_ANGLE)
            + "</g>"
        )
    out.append(_text(frame.left + 2, frame.height - 6, "layer", "axis-title"))
    return "".join(out)


# --------------------------------------------------------------------------------------------
# grouped bar charts
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Series:
    """One bar per layer. ``faded`` bars are drawn pale and dashed (a value assumed or
    estimated); ``None`` values get no bar, or an "n/a" mark where ``mark_missing``."""

    label: str
    colour: str
    values: Sequence[float | None]
    tips: Sequence[str]
    faded: Sequence[bool] = ()
    mark_missing: bool = False


@dataclass(frozen=True)
class Chart:
    """What a grouped bar chart says: its kind (the SVG class), title, a line under the title,
    the y axis title and tick format, and the legend."""

    cls: str
    title: str
    subtitle: str
    y_label: str
    fmt: Callable[[float], str]
    legend: Sequence[LegendItem]


def _bars(frame: Frame, axis: Axis, series: Sequence[Series]) -> tuple[str, list[float]]:
    """The bars of every layer and series; returns them and each group's top (for notes)."""
    out, tops = [], []
    group = frame.slot * 0.8
    width = group / len(series)
    for i in range(len(frame.labels)):
        top = frame.base
        for j, s in enumerate(series):
            x = frame.x(i) + frame.slot * 0.1 + j * width
            value = s.values[i]
            if value is None:
                if s.mark_missing:
                    out.append(_missing(x + width / 2, frame.base - 4, s.tips[i]))
                    top = min(top, frame.base - 26)
                continue
            y = frame.y(axis.frac(value))
            faded = bool(s.faded) and s.faded[i]
            h = max(frame.base - y, 1.0)  # a zero still shows as a hairline
            out.append(_rect(x, frame.base - h, width, h, s.colour, s.tips[i], _cls(faded)))
            top = min(top, frame.base - h)
        tops.append(top)
    return "".join(out), tops


def _cls(faded: bool) -> str:
    return "bar faded" if faded else "bar"


def _missing(x: float, y: float, tip: str) -> str:
    """The mark of a value the report does not have: not a zero-height bar, which reads as 0."""
    return f'<g class="missing">{_tip(tip)}' + _text(x + 3, y, "n/a", "na", rotate=-90) + "</g>"


def _group_notes(frame: Frame, tops: Sequence[float], notes: Sequence[str | None]) -> str:
    """A short text over each group (the speedup); turned when the slots are narrow."""
    out = []
    turn = frame.slot < 44
    for i, (top, note) in enumerate(zip(tops, notes)):
        if note is None:
            continue
        cx = frame.x(i) + frame.slot / 2
        if turn:
            out.append(_text(cx + 4, top - 4, note, "note", "start", rotate=-90))
        else:
            out.append(_text(cx, top - 5, note, "note", "middle"))
    return "".join(out)


def bar_chart(
    chart: Chart,
    names: Sequence[str],
    series: Sequence[Series],
    axis: Axis,
    notes: Sequence[str | None] = (),
) -> str:
    """A grouped bar chart with one group per layer: title, legend, axes, names, bars."""
    frame = Frame(tuple(short_name(n, LABEL_CHARS) for n in names))
    # a note over a full-height bar needs room under the legend
    frame = Frame(frame.labels, top=frame.top + (24 if any(notes) else 0))
    bars, tops = _bars(frame, axis, series)
    heading = _heading_width(chart.title, chart.subtitle)
    width = max(frame.width, _legend_width(chart.legend) + 40, heading, 640.0)
    body = [
        _text(12, 22, chart.title, "title"),
        _text(12, 42, chart.subtitle, "subtitle"),
        _legend(16, 66, chart.legend),
        _y_axis(frame, axis, chart.y_label, chart.fmt),
        bars,
        _group_notes(frame, tops, notes),
        _x_names(frame, names),
    ]
    return _svg(width, frame.height, chart.cls, chart.title, body)


def _no_data(cls: str, title: str, message: str) -> str:
    """The plot's place when the report has nothing to draw (an analysis has no timings)."""
    body = [_text(12, 22, title, "title"), _text(12, 50, message, "subtitle")]
    return _svg(max(640, _heading_width(title, message)), 70, f"{cls} empty", title, body)


# --------------------------------------------------------------------------------------------
# the three per-layer charts
# --------------------------------------------------------------------------------------------
def density_chart(layers: Sequence[dict]) -> str:
    """Weight density and input-activation density per layer (unknown activation: 1.0)."""
    names = [layer["name"] for layer in layers]
    weight = [float(layer["weight_density"]) for layer in layers]
    act = [(layer.get("activation") or {}).get("density") for layer in layers]
    act_known = [a is not None for a in act]
    act_values = [float(a) if a is not None else 1.0 for a in act]
    series = [
        Series(
            "weight density",
            WEIGHT_SPARSE,
            weight,
            [f"{n}\nweight density {w:.1%}" for n, w in zip(names, weight)],
        ),
        Series(
            "input activation density",
            ACTIVATION,
            act_values,
            [
                f"{n}\ninput activation density "
                + (f"{a:.1%}" if k else "unknown: drawn as 100% (dense)")
                for n, a, k in zip(names, act_values, act_known)
            ],
            faded=[not k for k in act_known],
        ),
    ]
    chart = Chart(
        cls="plot-density",
        title="Weight and activation density per layer",
        subtitle="fraction of non-zero weights, and of non-zero inputs where the network fixes it "
        "(k-WTA); lower is sparser",
        y_label="density (non-zero fraction)",
        fmt=lambda v: f"{v:.0%}",
        legend=[
            LegendItem("weight density", WEIGHT_SPARSE),
            LegendItem("input activation density", ACTIVATION),
            LegendItem("activation density unknown: drawn as 1.0 (dense)", ACTIVATION, "faded"),
        ],
    )
    return bar_chart(chart, names, series, Axis(0.0, 1.0))


def macs_chart(layers: Sequence[dict]) -> str:
    """MACs per layer: dense, with sparse weights, with sparse weights and activations."""
    names = [layer["name"] for layer in layers]
    dense = [float(layer["macs_dense"]) for layer in layers]
    ws = [float(layer["macs_weight_sparse"]) for layer in layers]
    ss = [layer.get("macs_sparse_sparse") for layer in layers]
    ss = [None if v is None else float(v) for v in ss]

    def tips(kind: str, values: Sequence[float | None]) -> list[str]:
        return [
            f"{n}\n{kind}: " + ("unknown" if v is None else f"{v:,.0f} MACs")
            for n, v in zip(names, values)
        ]

    series = [
        Series("dense", DENSE, dense, tips("dense", dense)),
        Series("weight-sparse", WEIGHT_SPARSE, ws, tips("weight-sparse", ws)),
        Series("sparse-sparse", SPARSE_SPARSE, ss, tips("sparse-sparse", ss)),
    ]
    chart = Chart(
        cls="plot-macs",
        title="Multiply-accumulates per layer (log scale)",
        subtitle="dense; skipping zero weights (weight-sparse); also skipping zero inputs "
        "(sparse-sparse, only where the activation density is known)",
        y_label="MACs (log scale)",
        fmt=_si,
        legend=[
            LegendItem("dense", DENSE),
            LegendItem("weight-sparse", WEIGHT_SPARSE),
            LegendItem("sparse-sparse (where activation density is known)", SPARSE_SPARSE),
        ],
    )
    return bar_chart(chart, names, series, log_axis(dense + ws + ss))


def _capitalized(text: str) -> str:
    return text[:1].upper() + text[1:]


def _time_series(names, times: Sequence[LayerTime], chosen: Sequence[str], scale: float, unit):
    """The dense and the chosen-kernel bars of the time chart, in ``unit`` (ms or µs)."""

    def value(ms: float | None) -> float | None:
        return None if ms is None else ms * scale

    def tip(name: str, what: str, ms: float | None, source: str | None) -> str:
        if ms is None:
            return f"{name}\n{what}: no timing in the report"
        return f"{name}\n{what}: {ms * scale:.3g} {unit} ({source})"

    dense = Series(
        "dense",
        DENSE,
        [value(t.dense_ms) for t in times],
        [tip(n, "dense", t.dense_ms, t.dense_source) for n, t in zip(names, times)],
        faded=[t.dense_source == "estimated" for t in times],
        mark_missing=True,
    )
    kernel = Series(
        "chosen kernel",
        CHOSEN,
        [value(t.chosen_ms) for t in times],
        [
            tip(n, f"chosen kernel {c}", t.chosen_ms, t.chosen_source)
            for n, t, c in zip(names, times, chosen)
        ],
        faded=[t.chosen_source == "estimated" for t in times],
        mark_missing=True,
    )
    return [dense, kernel]


def time_chart(layers: Sequence[dict]) -> str:
    """Dense vs chosen-kernel time per layer with each layer's speedup, and the total."""
    times = [layer_time(layer) for layer in layers]
    all_ms = [v for t in times for v in (t.dense_ms, t.chosen_ms) if v is not None]
    title = "Time per layer: dense vs the chosen kernel"
    if not all_ms:
        return _no_data(
            "plot-time",
            title,
            "no timings in this report (an analysis only: compile the model to get the cost "
            "model's estimates, or measured times)",
        )
    scale, unit = (1e3, "µs") if max(all_ms) < 0.1 else (1.0, "ms")
    names = [layer["name"] for layer in layers]
    chosen = [str(layer.get("chosen", "")) for layer in layers]
    series = _time_series(names, times, chosen, scale, unit)
    sources = sorted({s for t in times for s in (t.dense_source, t.chosen_source) if s})
    chart = Chart(
        cls="plot-time",
        title=title,
        subtitle=_capitalized(_total_text(total_time(layers), len(layers)))
        + f". Times: {' and '.join(sources)}; over each layer its speedup",
        y_label=f"time per layer ({unit})",
        fmt=lambda v: f"{v:g}",
        legend=[
            LegendItem("dense (measured)", DENSE),
            LegendItem("chosen kernel (measured)", CHOSEN),
            LegendItem("estimated by the cost model", CHOSEN, "faded"),
            LegendItem("n/a: no timing", "#ffffff", "na-swatch"),
        ],
    )
    notes = [None if t.speedup is None else _speedup(t.speedup) for t in times]
    values = [v for s in series for v in s.values]
    return bar_chart(chart, names, series, linear_axis(values), notes)


# --------------------------------------------------------------------------------------------
# sparsity heatmaps
# --------------------------------------------------------------------------------------------
# white is "no non-zero at all"; any non-zero starts at a visible pale blue. The ramp runs over
# sqrt(density): pruned layers sit at 5-30 %, where a linear ramp would be all one pale blue.
_RAMP = (
    (0.0, (222, 235, 247)),
    (0.35, (107, 174, 214)),
    (0.7, (33, 113, 181)),
    (1.0, (8, 48, 107)),
)


def density_colour(q: int) -> tuple[int, int, int]:
    """The colour of a quantized density (0..255; ``formats.weight_map``): white when empty."""
    if q <= 0:
        return (255, 255, 255)
    t = math.sqrt(q / 255)
    for (t0, c0), (t1, c1) in zip(_RAMP, _RAMP[1:]):
        if t <= t1:
            a = (t - t0) / (t1 - t0)
            return tuple(round(u + (v - u) * a) for u, v in zip(c0, c1))
    return _RAMP[-1][1]


def _hex(rgb: Sequence[int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def pick_heatmap_layer(layers: Sequence[dict]) -> int | None:
    """The layer worth the large heatmap: the sparse one (density < 1) with the most MACs, else
    the one with the most MACs; only layers with a weight map count."""
    mapped = [i for i, layer in enumerate(layers) if layer.get("weight_map")]
    sparse = [i for i in mapped if layers[i]["weight_density"] < 1]
    pool = sparse or mapped
    return max(pool, key=lambda i: layers[i]["macs_dense"]) if pool else None


def _coarse_panel(wmap: dict, x0: float, y0: float, px: float) -> str:
    """The whole matrix as cells coloured by density, each cell's range as its tooltip."""
    grid = coarse_map(wmap)
    rows, cols = wmap["shape"]
    cr, cc = wmap["cell"]
    gr, gc = grid.shape
    out = [_rect(x0, y0, gc * px, gr * px, "#ffffff", cls="frame"), '<g class="cells">']
    for r in range(gr):
        for c in range(gc):
            q = int(grid[r, c])
            tip = (
                f"outputs {r * cr}-{min((r + 1) * cr, rows) - 1}, "
                f"inputs {c * cc}-{min((c + 1) * cc, cols) - 1}: about {q / 255:.1%} non-zero"
            )
            colour = _hex(density_colour(q))
            out.append(_rect(x0 + c * px, y0 + r * px, px, px, colour, tip))
    out.append("</g>")
    # where the exact corner on the right sits in this matrix
    kr, kc = wmap["corner"]
    out.append(_rect(x0, y0, max(kc / cc * px, 2), max(kr / cr * px, 2), "none", cls="corner-box"))
    return "".join(out)


def _mask_panel(wmap: dict, x0: float, y0: float, px: float) -> str:
    """The exact top-left mask: non-zero runs of a row as one rect (a third of the bytes of one
    per element), white lines between elements so each stays countable, and guides every 4
    elements (N:M groups along the inputs, blocks), stronger every 16."""
    mask = corner_mask(wmap)
    kr, kc = mask.shape
    out = [_rect(x0, y0, kc * px, kr * px, "#ffffff", cls="frame")]
    for r in range(kr):
        c = 0
        while c < kc:
            if not mask[r, c]:
                c += 1
                continue
            end = c
            while end < kc and mask[r, end]:
                end += 1
            out.append(_rect(x0 + c * px, y0 + r * px, (end - c) * px, px, MASK_ON))
            c = end
    lines = [
        (c, _line(x0 + c * px, y0, x0 + c * px, y0 + kr * px, _guide(c))) for c in range(1, kc)
    ]
    lines += [
        (r, _line(x0, y0 + r * px, x0 + kc * px, y0 + r * px, _guide(r))) for r in range(1, kr)
    ]
    # separators first, guides over them, the 16s on top: no guide is cut by a separator
    lines.sort(key=lambda line: (line[0] % 4 == 0) + (line[0] % 16 == 0))
    return "".join(out) + "".join(markup for _, markup in lines)


def _guide(i: int) -> str:
    return "guide major" if i % 16 == 0 else "guide" if i % 4 == 0 else "sep"


def _colour_legend(x: float, y: float) -> str:
    """Density steps from empty to full, and the mask's two colours."""
    out = [_text(x, y - 6, "cell density (non-zero fraction; white: no non-zero):", "legend")]
    for k in range(11):
        q = round(k * 25.5)
        out.append(_rect(x + k * 26, y, 26, 14, _hex(density_colour(q)), f"{k * 10}%", "swatch"))
        if k in (0, 1, 5, 10):
            out.append(_text(x + k * 26 + 13, y + 28, f"{k * 10}%", "tick", "middle"))
    mx = x + 370
    out.append(_text(mx, y - 6, "exact mask:", "legend"))
    out.append(_rect(mx, y, 14, 14, MASK_ON, cls="swatch"))
    out.append(_text(mx + 19, y + 11, "non-zero", "legend"))
    out.append(_rect(mx + 84, y, 14, 14, "#ffffff", cls="swatch"))
    out.append(_text(mx + 103, y + 11, "zero", "legend"))
    return "".join(out)


def _heatmap_title(layer: dict) -> str:
    shape = "x".join(str(d) for d in layer.get("weight_shape", []))
    summary = (layer.get("patterns") or {}).get("summary", "unstructured")
    return (
        f"Sparsity pattern of {short_name(layer['name'], 48)}: {layer.get('op', '')} {shape}, "
        f"{layer['weight_density']:.1%} non-zero, pattern {summary}"
    )


def heatmap(layer: dict) -> str:
    """The large heatmap of one layer: the coarse map of the whole weight beside the exact mask
    of its top-left corner, with a colour legend."""
    wmap = layer["weight_map"]
    rows, cols = wmap["shape"]
    (gr, gc), (cr, cc), (kr, kc) = wmap["grid"], wmap["cell"], wmap["corner"]
    cpx = max(4.0, min(16.0, 352 / max(gr, gc, 1)))
    mpx = max(4.0, min(12.0, 448 / max(kc, 1)))
    coarse_label = f"whole matrix: {gr}x{gc} cells of {cr}x{cc} elements"
    top = 96.0
    x_mask = 86 + max(gc * cpx, len(coarse_label) * CHAR_W) + 48
    height = top + max(gr * cpx, kr * mpx) + 100
    title = _heatmap_title(layer)
    subtitle = (
        f"the weight as [outputs, inputs] = [{rows}, {cols}] (conv: inputs = C x KH x KW); "
        "hover a cell for its range and density"
    )
    body = [
        _text(12, 22, title, "title"),
        _text(12, 42, subtitle, "subtitle"),
        _text(86, top - 14, coarse_label, "legend"),
        _text(x_mask, top - 14, f"exact non-zeros of the top-left {kr}x{kc}", "legend"),
        _coarse_panel(wmap, 86, top, cpx),
        _mask_panel(wmap, x_mask, top, mpx),
        _text(86 + gc * cpx / 2, top + gr * cpx + 18, f"inputs (0..{cols - 1})", "tick", "middle"),
        _text(70, top + gr * cpx / 2, f"outputs (0..{rows - 1})", "tick", "middle", rotate=-90),
        _text(x_mask, top + kr * mpx + 18, "grid lines every 4 elements (16: darker)", "tick"),
        _text(86, top + gr * cpx + 34, "red box: the part shown exactly on the right", "tick"),
        _colour_legend(16, height - 40),
    ]
    width = max(x_mask + kc * mpx + 24, 16 + 370 + 160, _heading_width(title, subtitle))
    return _svg(width, height, "plot-heatmap", title, body)


def _png(rgb: np.ndarray) -> bytes:
    """A minimal RGB PNG (8 bit, no filter): the small heatmaps are pictures of 32 x 32 pixels,
    a few hundred bytes each, where 1024 SVG rects would be 50 KB."""
    height, width, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].tobytes() for y in range(height))

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


_LUT = np.array([density_colour(q) for q in range(256)], dtype=np.uint8)


def small_heatmap(layer: dict) -> str:
    """A thumbnail of one layer's coarse map (an inline PNG, scaled up without smoothing)."""
    grid = coarse_map(layer["weight_map"])
    if grid.size == 0:
        return ""
    gr, gc = grid.shape
    scale = 96 / max(gr, gc)
    data = base64.b64encode(_png(_LUT[grid])).decode("ascii")
    name = layer["name"]
    return (
        f'<figure class="mini" title="{html_text(name)}">'
        f'<img class="heatmap-small" src="data:image/png;base64,{data}" '
        f'width="{math.ceil(gc * scale)}" height="{math.ceil(gr * scale)}" '
        f'alt="sparsity of {html_text(name)}">'
        f"<figcaption>{html_text(short_name(name, 24))}<br>"
        f"{layer['weight_density']:.1%} · {html_text(layer.get('op', ''))}</figcaption></figure>"
    )


# --------------------------------------------------------------------------------------------
# the page
# --------------------------------------------------------------------------------------------
NUMERIC_COLUMNS = {"density", "MACs dense", "MACs w-sparse", "MACs sparse-sparse", "est/meas ms"}


def table_html(table: Sequence[Sequence[str]]) -> str:
    """``Report.table()``'s columns as an HTML table (first row: the header); the layer name
    column shows the short name and carries the full one as its tooltip."""
    header, *rows = table
    numeric = [h in NUMERIC_COLUMNS for h in header]
    head = "".join(f"<th>{html_text(h)}</th>" for h in header)
    body = []
    for row in rows:
        name, *rest = row
        cells = [
            f'<td class="name" title="{html_text(name)}">{html_text(short_name(name, 48))}</td>'
        ]
        cells += [
            f'<td class="num">{html_text(c)}</td>' if num else f"<td>{html_text(c)}</td>"
            for c, num in zip(rest, numeric[1:])
        ]
        body.append(f"<tr>{''.join(cells)}</tr>")
    return (
        f'<table class="layers"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def _stat(label: str, value: str, detail: str = "") -> str:
    extra = f"<small>{html_text(detail)}</small>" if detail else ""
    return (
        f'<div class="stat"><span>{html_text(label)}</span><b>{html_text(value)}</b>{extra}</div>'
    )


def header_html(report: dict) -> str:
    """Model, target, totals and notes: what a reader wants before any plot."""
    layers = report["layers"]
    dense = sum(layer["macs_dense"] for layer in layers)
    ws = sum(layer["macs_weight_sparse"] for layer in layers)
    ss_known = [layer for layer in layers if layer.get("macs_sparse_sparse") is not None]
    stats = [
        _stat("target", report.get("target") or "none (analysis only)"),
        _stat("weighted layers", str(len(layers))),
        _stat("dense MACs", _si(dense), f"{dense:,}"),
        _stat("weight-sparse MACs", _si(ws), f"{ws / dense:.1%} of dense" if dense else ""),
    ]
    if ss_known:
        ss = sum(layer["macs_sparse_sparse"] for layer in ss_known)
        detail = f"{_count(len(ss_known), 'layer')} with a known activation density"
        stats.append(_stat("sparse-sparse MACs", _si(ss), detail))
    total = total_time(layers)
    if total is not None:
        detail = f"{_speedup(total.speedup)} faster ({' / '.join(total.sources)}, "
        detail += f"{total.layers} of {_count(len(layers), 'layer')})"
        stats.append(
            _stat(
                "chosen vs dense time", f"{_ms(total.chosen_ms)} vs {_ms(total.dense_ms)}", detail
            )
        )
    notes = "".join(f"<li>{html_text(n)}</li>" for n in report.get("notes", []))
    return (
        f"<header><h1>tvm-sparse report: {html_text(report.get('model') or '(unnamed model)')}"
        f'</h1><div class="stats">{"".join(stats)}</div>'
        + (f'<ul class="notes">{notes}</ul>' if notes else "")
        + "</header>"
    )


def _heatmap_section(layers: Sequence[dict], heatmap_layer: str | None) -> str:
    index = pick_heatmap_layer(layers)
    if heatmap_layer is not None:
        named = [i for i, layer in enumerate(layers) if layer["name"] == heatmap_layer]
        if not named or not layers[named[0]].get("weight_map"):
            raise ValueError(f"no layer named {heatmap_layer!r} with a weight map in the report")
        index = named[0]
    if index is None:
        return _no_data(
            "plot-heatmap",
            "Sparsity pattern",
            "this report keeps no weight maps (written by an older tvm-sparse)",
        )
    minis = "".join(small_heatmap(layer) for layer in layers if layer.get("weight_map"))
    return (
        f'<div class="scroll">{heatmap(layers[index])}</div>'
        "<details><summary>Coarse sparsity map of every layer</summary>"
        f'<p class="hint">Same colours as above; rows are outputs, columns inputs.</p>'
        f'<div class="minis">{minis}</div></details>'
    )


CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d2433;
margin:0;padding:20px 28px;background:#f6f7f9}
h1{font-size:22px;margin:0 0 12px;word-break:break-all}
h2{font-size:17px;margin:28px 0 8px}
.stats{display:flex;flex-wrap:wrap;gap:10px}
.stat{background:#fff;border:1px solid #dde1e7;border-radius:6px;padding:8px 14px;min-width:150px}
.stat span{display:block;color:#5f6b7a;font-size:12px}.stat b{font-size:18px;display:block}
.stat small{color:#5f6b7a}
.notes{background:#fff8e1;border:1px solid #f0dca0;border-radius:6px;padding:8px 8px 8px 28px}
.scroll{overflow-x:auto;background:#fff;border:1px solid #dde1e7;border-radius:6px;
margin:10px 0;padding:6px}
svg.plot{display:block;font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif}
svg .title{font-size:15px;font-weight:600;fill:#1d2433}
svg .subtitle{font-size:12px;fill:#5f6b7a}
svg .legend,svg .name,svg .tick{font-size:11px;fill:#33404f}
svg .axis-title{font-size:12px;fill:#33404f}
svg .note{font-size:10px;fill:#a34d14;font-weight:600}
svg .na{font-size:10px;fill:#5f6b7a;font-style:italic}
svg .grid{stroke:#e6e9ee;stroke-width:1}svg .axis{stroke:#5f6b7a;stroke-width:1}
svg .bar:hover{opacity:.8}
svg .faded{fill-opacity:.22;stroke:#5f6b7a;stroke-width:.7;stroke-dasharray:2 2}
svg .na-swatch{stroke:#8a94a3;stroke-dasharray:2 2}
svg .cells rect{shape-rendering:crispEdges}
svg .frame{stroke:#5f6b7a;stroke-width:1}svg .swatch{stroke:#aab2bd;stroke-width:.5}
svg .sep{stroke:#fff;stroke-width:1}svg .guide{stroke:#9aa5b4;stroke-width:1}
svg .guide.major{stroke:#4a5566;stroke-width:1.3}
svg .corner-box{stroke:#d62728;stroke-width:1.5;fill:none}
table.layers{border-collapse:collapse;background:#fff;font-size:12.5px}
.layers th,.layers td{border:1px solid #dde1e7;padding:3px 8px;text-align:left;white-space:nowrap}
.layers th{background:#eef1f5;position:sticky;top:0}.layers td.num{text-align:right}
.layers tbody tr:nth-child(even){background:#f8f9fb}
details{margin:10px 0}summary{cursor:pointer;font-weight:600}
.minis{display:flex;flex-wrap:wrap;gap:12px;margin-top:8px}
.mini{margin:0;background:#fff;border:1px solid #dde1e7;border-radius:4px;padding:6px;
text-align:center;font-size:11px;width:120px;overflow-wrap:anywhere}
.mini img{image-rendering:pixelated;border:1px solid #aab2bd;display:block;margin:0 auto 4px}
.hint{color:#5f6b7a;margin:4px 0}
"""


def render_html(
    report: dict, table: Sequence[Sequence[str]], heatmap_layer: str | None = None
) -> str:
    """The page of ``report`` (``Report.to_dict()``) with ``table`` (header row first, rows as
    ``LayerReport.cells()``). ``heatmap_layer``: the layer of the large heatmap (default: see
    ``pick_heatmap_layer``)."""
    layers = report["layers"]
    model = report.get("model") or "(unnamed model)"
    plots = (
        [density_chart(layers), macs_chart(layers), time_chart(layers)]
        if layers
        else [_no_data("plot-density", "Layers", "the model has no weighted layer")]
    )
    sections = [
        header_html(report),
        "<h2>Per layer</h2>",
        *(f'<div class="scroll">{p}</div>' for p in plots),
        "<h2>Sparsity pattern</h2>",
        _heatmap_section(layers, heatmap_layer),
        "<h2>Table</h2>",
        f'<div class="scroll">{table_html(table)}</div>',
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>tvm-sparse report: {html_text(model)}</title><style>{CSS}</style></head>"
        f"<body>{''.join(sections)}</body></html>\n"
    )
