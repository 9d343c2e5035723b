"""Figures for the stage report, as SVG text: line charts (loss curves, accuracy stage by stage, p(success)
along a solution with its pivotal tokens marked) and grouped bar charts with error bars (accuracy per
stage with its 95% interval). A room: eval.py writes them as files beside report.md.

Why hand-written SVG and not a plotting library: nothing more to install (requirements.txt stays as it
is), and a figure is text: it diffs in git, opens in any browser and shows in markdown as ![](loss.svg).
Two chart types are all the report needs, so the price is this one short file.

Geometry, exposed for tests and for anyone adding a chart: the plot area is the canvas minus the fixed
margins below (the legend lives in the right one). Data map onto it linearly (log10 for a log x axis);
an axis runs from its first nice tick to its last, or exactly over the range the caller gives.
"""

from __future__ import annotations

import math
from xml.sax.saxutils import escape

# Okabe and Ito's colour-blind-safe palette, in the order series take it (then it repeats).
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 64, 150, 40, 52  # pixels around the plot area


def text(value) -> str:
    """Escape text for an XML element or a double-quoted attribute (a title such as "p < 0.05 & n > 50")."""
    return escape(str(value), {'"': "&quot;"})


def number(value: float) -> str:
    """A tick label as short as it reads: 0.2, 5, 1.5k, 2M, 3B, 1e-05 (three significant digits at most)."""
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"  # also hides float noise: 0.6000000000000001 -> 0.6


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About `count` round ticks (steps of 1, 2 or 5 times a power of ten) from at or below `low` to at or
    above `high`. Examples: (0, 1) -> 0, 0.2, ..., 1; (0, 37) -> 0, 10, ..., 40; (-3, 3) -> -4, -2, ..., 4."""
    if high <= low:  # a single value: give the axis some length around it
        spread = abs(low) / 2 or 1.0
        low, high = low - spread, high + spread
    raw_step = (high - low) / (count - 1)
    exponent = math.floor(math.log10(raw_step))
    fraction = raw_step / 10**exponent  # in [1, 10): choose the nearest of 1, 2, 5, 10 (Heckbert's rule)
    mantissa = 1 if fraction < 1.5 else 2 if fraction < 3 else 5 if fraction < 7 else 10
    if mantissa == 10:
        mantissa, exponent = 1, exponent + 1
    step = mantissa * 10.0**exponent
    first, last = math.floor(low / step + 1e-9), math.ceil(high / step - 1e-9)
    # Multiply integers, then divide by a power of ten, so 3 * 0.2 prints as 0.6 and not 0.6000000000000001.
    if exponent >= 0:
        return [float(i * mantissa * 10**exponent) for i in range(first, last + 1)]
    return [i * mantissa / 10**-exponent for i in range(first, last + 1)]


def decade_ticks(low: float, high: float) -> list[float]:
    """Ticks of a log axis: the powers of ten around [low, high], thinned to about six."""
    first, last = math.floor(math.log10(low)), math.ceil(math.log10(high))
    last = max(last, first + 1)  # at least one decade, so the axis has a length
    stride = max(1, math.ceil((last - first) / 6))
    return [10.0**k for k in range(first, last + 1, stride)]


def y_axis(values: list[float], y_range: tuple[float, float] | None) -> tuple[list[float], tuple[float, float]]:
    """Ticks and range of a y axis: nice ticks covering the values, or exactly the caller's range with the
    nice ticks that fall inside it (a fixed (0, 1) keeps accuracy charts comparable across stages)."""
    if y_range is None:
        ticks = nice_ticks(min(values), max(values))
        return ticks, (ticks[0], ticks[-1])
    if not y_range[0] < y_range[1]:
        raise ValueError(f"y_range must run from low to high, got {y_range}")
    return [t for t in nice_ticks(*y_range) if y_range[0] - 1e-12 <= t <= y_range[1] + 1e-12], y_range


class PlotArea:
    """Maps data coordinates to pixels of the plot area of a width x height canvas (y grows downwards)."""

    def __init__(self, width: int, height: int, x_range: tuple[float, float], y_range: tuple[float, float],
                 log_x: bool = False):
        self.left, self.right = MARGIN_LEFT, width - MARGIN_RIGHT
        self.top, self.bottom = MARGIN_TOP, height - MARGIN_BOTTOM
        self.log_x = log_x
        self.x_range, self.y_range = x_range, y_range

    def x(self, value: float) -> float:
        scale = math.log10 if self.log_x else (lambda v: v)
        low, high = scale(self.x_range[0]), scale(self.x_range[1])
        return self.left + (scale(value) - low) / (high - low) * (self.right - self.left)

    def y(self, value: float) -> float:
        low, high = self.y_range
        return self.bottom - (value - low) / (high - low) * (self.bottom - self.top)


def frame(area: PlotArea, width: int, height: int, title: str, x_label: str, y_label: str,
          y_ticks: list[float], x_ticks: list[float] | None) -> list[str]:
    """The parts every chart shares: canvas, title, horizontal gridlines and y labels, x gridlines and
    labels (when the x axis is numeric), axis titles, and a clip path that keeps lines inside the area."""
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        'font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<clipPath id="plot-area"><rect x="{area.left}" y="{area.top}" width="{area.right - area.left}" '
        f'height="{area.bottom - area.top}"/></clipPath>',
        f'<text class="title" x="{width / 2:.2f}" y="{MARGIN_TOP / 2 + 5:.2f}" text-anchor="middle" '
        f'font-size="15">{text(title)}</text>',
    ]
    for tick in y_ticks:
        y = area.y(tick)
        parts.append(f'<line class="grid" x1="{area.left}" y1="{y:.2f}" x2="{area.right}" y2="{y:.2f}" stroke="#ddd"/>')
        parts.append(f'<text class="tick" x="{area.left - 6}" y="{y + 4:.2f}" text-anchor="end">'
                     f'{text(number(tick))}</text>')
    for tick in x_ticks or []:
        x = area.x(tick)
        parts.append(f'<line class="grid" x1="{x:.2f}" y1="{area.top}" x2="{x:.2f}" y2="{area.bottom}" stroke="#ddd"/>')
        parts.append(f'<text class="tick" x="{x:.2f}" y="{area.bottom + 16}" text-anchor="middle">'
                     f'{text(number(tick))}</text>')
    # The axes themselves, drawn over the gridlines: left and bottom edges of the plot area.
    parts.append(f'<path d="M{area.left},{area.top} V{area.bottom} H{area.right}" fill="none" stroke="#333"/>')
    parts.append(f'<text class="x-label" x="{(area.left + area.right) / 2:.2f}" y="{height - 12}" '
                 f'text-anchor="middle">{text(x_label)}</text>')
    y_middle = (area.top + area.bottom) / 2  # the y title reads bottom to top, rotated about its own anchor
    parts.append(f'<text class="y-label" x="16" y="{y_middle:.2f}" text-anchor="middle" '
                 f'transform="rotate(-90 16 {y_middle:.2f})">{text(y_label)}</text>')
    return parts


def legend(names: list[str], area: PlotArea) -> list[str]:
    """One swatch and name per series, stacked in the right margin."""
    parts = ['<g class="legend">']
    for i, name in enumerate(names):
        y = area.top + 8 + 20 * i
        colour = PALETTE[i % len(PALETTE)]
        parts.append(f'<rect x="{area.right + 14}" y="{y - 9}" width="14" height="10" fill="{colour}"/>')
        parts.append(f'<text x="{area.right + 34}" y="{y}">{text(name)}</text>')
    return parts + ["</g>"]


def check_finite(name: str, values: list[float]) -> None:
    """Refuse a series that is empty or holds NaN/inf, naming it: a silent gap would hide a broken run."""
    if not values:
        raise ValueError(f"series {name!r} is empty: nothing to plot")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"series {name!r} holds NaN or infinite values")


def line_chart(series: dict[str, list[tuple[float, float]]], title: str, x_label: str, y_label: str,
               width: int = 640, height: int = 360, y_range: tuple[float, float] | None = None,
               log_x: bool = False, markers: list[tuple[float, float, str]] | None = None) -> str:
    """An SVG document with one line per series (name -> [(x, y), ...], in drawing order) and a legend.

    y_range fixes the y axis (e.g. (0, 1) for accuracy; points outside it are clipped), else the axis
    covers the data with nice ticks. log_x puts x on a log10 axis (steps or tokens over decades).
    markers are (x, y, label) points drawn as labelled circles, e.g. the pivotal tokens on a p(success) curve.
    """
    if not series:
        raise ValueError("line_chart needs at least one series")
    for name, points in series.items():
        check_finite(name, [v for point in points for v in point])
        if log_x and any(x <= 0 for x, _ in points):
            raise ValueError(f"series {name!r} has x <= 0, which a log x axis cannot show")
    markers = markers or []
    for x, y, label in markers:
        check_finite(f"marker {label}", [x, y])
    xs = [x for points in series.values() for x, _ in points] + [x for x, _, _ in markers]
    ys = [y for points in series.values() for _, y in points] + [y for _, y, _ in markers]
    x_ticks = decade_ticks(min(xs), max(xs)) if log_x else nice_ticks(min(xs), max(xs))
    y_ticks, y_range = y_axis(ys, y_range)
    area = PlotArea(width, height, (x_ticks[0], x_ticks[-1]), y_range, log_x)
    parts = frame(area, width, height, title, x_label, y_label, y_ticks, x_ticks)
    for i, (name, points) in enumerate(series.items()):
        coordinates = " ".join(f"{area.x(x):.2f},{area.y(y):.2f}" for x, y in points)
        parts.append(f'<polyline class="series" data-series="{text(name)}" points="{coordinates}" fill="none" '
                     f'stroke="{PALETTE[i % len(PALETTE)]}" stroke-width="2" clip-path="url(#plot-area)"/>')
        if len(points) == 1:  # a line through one point is invisible: show the point itself
            x, y = points[0]
            parts.append(f'<circle class="point" cx="{area.x(x):.2f}" cy="{area.y(y):.2f}" r="3" '
                         f'fill="{PALETTE[i % len(PALETTE)]}"/>')
    for x, y, label in markers:
        cx, cy = area.x(x), area.y(y)
        parts.append(f'<circle class="marker" cx="{cx:.2f}" cy="{cy:.2f}" r="4" fill="white" stroke="#000"/>')
        parts.append(f'<text class="marker-label" x="{cx + 6:.2f}" y="{cy - 6:.2f}" font-size="11">{text(label)}</text>')
    return "\n".join(parts + legend(list(series), area) + ["</svg>"]) + "\n"


def bar_chart(groups: list[str], series: dict[str, list[float]], title: str, y_label: str,
              errors: dict[str, list[tuple[float, float]]] | None = None, width: int = 640, height: int = 360,
              y_range: tuple[float, float] | None = None, x_label: str = "") -> str:
    """An SVG document of grouped bars: one group per entry of `groups` (e.g. stages), one bar per series
    in each (e.g. benchmarks), bars rising from 0. errors[name][i] = (lo, hi) draws an error bar, e.g.
    the 95% interval of an accuracy."""
    if not groups or not series:
        raise ValueError("bar_chart needs at least one group and one series")
    errors = errors or {}
    for name, values in series.items():
        check_finite(name, values)
        if len(values) != len(groups):
            raise ValueError(f"series {name!r} has {len(values)} values for {len(groups)} groups")
    for name, intervals in errors.items():
        if name not in series or len(intervals) != len(groups):
            raise ValueError(f"errors for {name!r} need a series of that name and one (lo, hi) per group")
        check_finite(f"errors of {name}", [v for interval in intervals for v in interval])
    extent = [0.0] + [v for values in series.values() for v in values]  # 0 too: bars start there
    extent += [v for intervals in errors.values() for interval in intervals for v in interval]
    y_ticks, y_range = y_axis(extent, y_range)
    area = PlotArea(width, height, (0.0, float(len(groups))), y_range)  # x in "group slots": group i spans [i, i+1]
    parts = frame(area, width, height, title, x_label, y_label, y_ticks, None)
    slot = (area.right - area.left) / len(groups)
    bar_width = 0.8 * slot / len(series)  # bars fill 80% of a slot; the rest separates the groups
    base = area.y(min(max(0.0, y_range[0]), y_range[1]))  # bars start at 0, or at the axis edge if 0 is off it
    for g, group in enumerate(groups):
        parts.append(f'<text class="group" x="{area.left + (g + 0.5) * slot:.2f}" y="{area.bottom + 16}" '
                     f'text-anchor="middle">{text(group)}</text>')
        for s, (name, values) in enumerate(series.items()):
            x = area.left + g * slot + 0.1 * slot + s * bar_width
            top = area.y(values[g])
            parts.append(f'<rect class="bar" data-series="{text(name)}" x="{x:.2f}" y="{min(top, base):.2f}" '
                         f'width="{bar_width:.2f}" height="{abs(base - top):.2f}" fill="{PALETTE[s % len(PALETTE)]}" '
                         'clip-path="url(#plot-area)"/>')
            if name in errors:  # a vertical line from lo to hi with short caps, centred on the bar
                lo, hi = errors[name][g]
                middle, cap = x + bar_width / 2, min(6.0, bar_width / 3)
                parts.append(f'<path class="error" data-series="{text(name)}" d="M{middle:.2f},{area.y(lo):.2f} '
                             f'V{area.y(hi):.2f} M{middle - cap:.2f},{area.y(lo):.2f} h{2 * cap:.2f} '
                             f'M{middle - cap:.2f},{area.y(hi):.2f} h{2 * cap:.2f}" stroke="#000" fill="none"/>')
    return "\n".join(parts + legend(list(series), area) + ["</svg>"]) + "\n"
