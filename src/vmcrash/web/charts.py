"""Charts as server-rendered SVG (pure): freeze over time, clock offsets over time.

No script, no CSS: only SVG presentation attributes, so the dashboard's CSP (no inline style or
script) holds. Every piece of text that reaches the SVG (domain names, labels) is escaped here.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

__all__ = ["Point", "Series", "chart_svg"]

_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2")
_MAX_POINTS = 4000


@dataclass(frozen=True)
class Point:
    """One mark: ``x_ns`` host wall-clock time, ``y`` in the chart's unit, a tooltip and an optional link."""

    x_ns: int
    y: float
    label: str
    href: str | None = None
    #: ``False`` draws a hollow ring (e.g. the offset left after a correction) instead of a dot
    solid: bool = True


@dataclass(frozen=True)
class Series:
    name: str
    points: tuple[Point, ...]
    line: bool = False


def _fmt_time(ns: float, span_ns: float) -> str:
    """A tick label: seconds shown when the chart spans less than an hour."""
    return time.strftime("%H:%M:%S" if span_ns < 3600e9 else "%m-%d %H:%M", time.gmtime(ns / 1e9))


def _fmt_value(v: float) -> str:
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.3g}"


def _nice_ticks(lo: float, hi: float, n: int = 4) -> list[float]:
    if hi <= lo:
        hi = lo + 1.0
    step = (hi - lo) / n
    return [lo + i * step for i in range(n + 1)]


def chart_svg(series: Sequence[Series], *, title: str, y_unit: str, width: int = 860, height: int = 240,
              zero_line: bool = False) -> Markup:
    """An SVG chart of ``series`` (time on x); an empty-state SVG when there is nothing to draw.

    At most 4000 points per series are drawn (the last ones given); the title names it for screen
    readers.
    """
    left, right, top, bottom = 64, 16, 28, 36
    series = [Series(s.name, tuple(s.points[-_MAX_POINTS:]), s.line) for s in series]
    pts = [p for s in series for p in s.points]
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" viewBox="0 0 {width} {height}" '
             f'width="{width}" height="{height}" aria-label="{escape(title)}"><title>{escape(title)}</title>',
             f'<text x="{left}" y="16" font-size="13" font-weight="bold" fill="#222">{escape(title)}</text>']
    if not pts:
        parts.append(f'<text x="{width // 2}" y="{height // 2}" text-anchor="middle" fill="#777" '
                     f'font-size="13">nothing recorded yet</text></svg>')
        return Markup("".join(parts))
    x0, x1 = min(p.x_ns for p in pts), max(p.x_ns for p in pts)
    if x1 == x0:
        x0, x1 = x0 - 60_000_000_000, x1 + 60_000_000_000
    ys = [p.y for p in pts]
    y0, y1 = min(min(ys), 0.0), max(max(ys), 0.0)
    if y1 == y0:
        y1 = y0 + 1.0
    pad = (y1 - y0) * 0.08
    y0, y1 = (y0 - pad if y0 < 0 else y0), y1 + pad
    pw, ph = width - left - right, height - top - bottom

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * pw

    def sy(y: float) -> float:
        return top + ph - (y - y0) / (y1 - y0) * ph

    parts.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#fafafa" stroke="#ccc"/>')
    for t in _nice_ticks(y0, y1):
        parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" stroke="#e4e4e4"/>'
                     f'<text x="{left - 6}" y="{sy(t) + 4:.1f}" text-anchor="end" font-size="11" fill="#555">'
                     f'{_fmt_value(t)}</text>')
    if zero_line and y0 < 0 < y1:
        parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{sy(0):.1f}" y2="{sy(0):.1f}" stroke="#999"/>')
    ticks = _nice_ticks(x0, x1)
    for i, t in enumerate(ticks):
        anchor = "start" if i == 0 else "end" if i == len(ticks) - 1 else "middle"
        parts.append(f'<text x="{sx(t):.1f}" y="{top + ph + 16}" text-anchor="{anchor}" font-size="11" '
                     f'fill="#555">{escape(_fmt_time(t, x1 - x0))}</text>')
    parts.append(f'<text x="14" y="{top + ph / 2:.0f}" font-size="11" fill="#555" '
                 f'transform="rotate(-90 14 {top + ph / 2:.0f})" text-anchor="middle">{escape(y_unit)}</text>')
    for i, s in enumerate(series):
        color = _PALETTE[i % len(_PALETTE)]
        spts = s.points
        if s.line and len(spts) > 1:
            coords = " ".join(f"{sx(p.x_ns):.1f},{sy(p.y):.1f}" for p in sorted(spts, key=lambda p: p.x_ns))
            parts.append(f'<polyline points="{coords}" fill="none" stroke="{color}" stroke-width="1.5"/>')
        for p in spts:
            paint = f'class="mark" fill="{color}"' if p.solid else f'class="ring" fill="#fff" stroke="{color}"'
            mark = (f'<circle {paint} cx="{sx(p.x_ns):.1f}" cy="{sy(p.y):.1f}" r="4">'
                    f'<title>{escape(p.label)}</title></circle>')
            parts.append(f'<a href="{escape(p.href)}">{mark}</a>' if p.href else mark)
    if len(series) > 1:
        for i, s in enumerate(series[:8]):
            y = top + 12 + i * 14
            parts.append(f'<rect x="{left + pw - 200}" y="{y - 8}" width="8" height="8" '
                         f'fill="{_PALETTE[i % len(_PALETTE)]}"/><text x="{left + pw - 188}" y="{y}" font-size="11" '
                         f'fill="#333">{escape(s.name[:32])}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))
