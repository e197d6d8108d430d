"""The report's plots, as inline SVG written directly: no plotting library, nothing to load.

Every plot of the report is a row chart: one labelled row per bench x variant (or domain),
with marks on a shared horizontal axis. `RowChart` draws that; the four plot functions fill it.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field

import numpy as np

from omk_ray.analysis.compare import Comparison

COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
OUTCOME_COLORS = {"both_correct": "#4c9a2a", "both_wrong": "#b0b0b0", "lost": "#d62728", "gained": "#1f77b4"}
ROW, PLOT_WIDTH, CHAR, FONT = 18, 560, 6.6, 11  # px: row height, axis width, label char width, font size
PAD, LEGEND, AXIS = 10, 24, 38  # px: margin, legend band above, axis band below


@dataclass
class RowChart:
    labels: list[str]
    x_label: str
    log: bool = False
    lo: float | None = None  # axis range; None: from the marks
    hi: float | None = None
    legend: dict[str, str] = field(default_factory=dict)  # name -> colour
    zero_line: bool = False
    _marks: list[tuple] = field(default_factory=list)

    # -- marks: values in data units, one row index each ------------------------------------

    def bar(self, row: int, x0: float, x1: float, color: str, opacity: float = 1.0, title: str = "") -> None:
        self._marks.append(("bar", row, x0, x1, color, opacity, title))

    def range(self, row: int, x0: float, x1: float, color: str, title: str = "") -> None:
        self._marks.append(("range", row, x0, x1, color, 0.6, title))

    def dot(self, row: int, x: float, color: str, title: str = "") -> None:
        self._marks.append(("dot", row, x, x, color, 1.0, title))

    def cross(self, row: int, x: float, color: str, title: str = "") -> None:
        self._marks.append(("cross", row, x, x, color, 1.0, title))

    def whisker(self, row: int, x0: float, x1: float, color: str, title: str = "") -> None:
        self._marks.append(("whisker", row, x0, x1, color, 1.0, title))

    # -- drawing -----------------------------------------------------------------------------

    def svg(self, label: str) -> str:
        lo, hi = self._range()
        left = PAD + CHAR * max((len(t) for t in self.labels), default=0) + 8
        top = PAD + (LEGEND if self.legend else 0)
        width = left + PLOT_WIDTH + 2 * PAD
        height = top + ROW * len(self.labels) + AXIS + PAD

        def x(value: float) -> float:
            if self.log:
                value, a, b = math.log10(max(value, lo)), math.log10(lo), math.log10(hi)
            else:
                a, b = lo, hi
            return left + (min(max(value, a), b) - a) / (b - a) * PLOT_WIDTH

        out = [f'<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="{_esc(label)}" width="{width:.0f}" '
               f'height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}" font-family="sans-serif" font-size="{FONT}">',
               f'<rect x="0" y="0" width="{width:.0f}" height="{height:.0f}" fill="white"/>']
        bottom = top + ROW * len(self.labels)
        for tick, text in self._ticks(lo, hi):
            tx = x(tick)
            out.append(f'<line x1="{tx:.1f}" y1="{top}" x2="{tx:.1f}" y2="{bottom}" stroke="#e3e3e3"/>')
            out.append(f'<text x="{tx:.1f}" y="{bottom + 14}" text-anchor="middle" fill="#333">{text}</text>')
        if self.zero_line and lo < 0 < hi:
            out.append(f'<line x1="{x(0):.1f}" y1="{top}" x2="{x(0):.1f}" y2="{bottom}" stroke="#444"/>')
        out.append(f'<rect x="{left}" y="{top}" width="{PLOT_WIDTH}" height="{ROW * len(self.labels)}" fill="none" stroke="#888"/>')
        out.append(f'<text x="{left + PLOT_WIDTH / 2:.1f}" y="{bottom + 30}" text-anchor="middle" fill="#333">{_esc(self.x_label)}</text>')
        for i, text in enumerate(self.labels):
            out.append(f'<text x="{left - 6:.1f}" y="{top + ROW * i + ROW / 2 + 4:.1f}" text-anchor="end" fill="#222">{_esc(text)}</text>')
        for kind, row, x0, x1, color, opacity, title in self._marks:
            out.append(self._mark(kind, top + ROW * row + ROW / 2, x(x0), x(x1), color, opacity, title))
        lx = left
        for name, color in self.legend.items():
            out.append(f'<rect x="{lx:.1f}" y="{PAD + 3}" width="12" height="12" fill="{color}"/>'
                       f'<text x="{lx + 16:.1f}" y="{PAD + 13}" fill="#222">{_esc(name)}</text>')
            lx += 16 + CHAR * len(name) + 18
        out.append("</svg>")
        return "\n".join(out)

    @staticmethod
    def _mark(kind: str, y: float, x0: float, x1: float, color: str, opacity: float, title: str) -> str:
        tip = f"<title>{_esc(title)}</title>" if title else ""
        if kind == "bar":
            a, b = sorted((x0, x1))
            return (f'<rect x="{a:.1f}" y="{y - ROW * 0.35:.1f}" width="{max(b - a, 0.5):.1f}" height="{ROW * 0.7:.1f}" '
                    f'fill="{color}" fill-opacity="{opacity}">{tip}</rect>')
        if kind == "range":
            return (f'<line x1="{x0:.1f}" y1="{y:.1f}" x2="{max(x1, x0 + 1):.1f}" y2="{y:.1f}" stroke="{color}" '
                    f'stroke-width="6" stroke-opacity="{opacity}">{tip}</line>')
        if kind == "dot":
            return f'<circle cx="{x0:.1f}" cy="{y:.1f}" r="4" fill="{color}">{tip}</circle>'
        if kind == "cross":
            return (f'<path d="M{x0 - 4:.1f},{y - 4:.1f}L{x0 + 4:.1f},{y + 4:.1f}M{x0 - 4:.1f},{y + 4:.1f}L{x0 + 4:.1f},{y - 4:.1f}" '
                    f'stroke="{color}" stroke-width="1.5">{tip}</path>')
        return (f'<path d="M{x0:.1f},{y:.1f}H{x1:.1f}M{x0:.1f},{y - 4:.1f}V{y + 4:.1f}M{x1:.1f},{y - 4:.1f}V{y + 4:.1f}" '
                f'stroke="{color}" stroke-width="1.5">{tip}</path>')

    def _range(self) -> tuple[float, float]:
        values = [v for m in self._marks for v in (m[2], m[3]) if v is not None and math.isfinite(v)]
        if self.zero_line:
            values.append(0.0)
        lo = self.lo if self.lo is not None else min(values, default=0.0)
        hi = self.hi if self.hi is not None else max(values, default=1.0)
        if self.log:
            lo = 10 ** math.floor(math.log10(max(lo, 1)))
            hi = 10 ** math.ceil(math.log10(max(hi, lo * 10)))
            return lo, hi
        if hi - lo < 1e-9:
            lo, hi = lo - 1, hi + 1
        pad = 0.04 * (hi - lo) if self.lo is None else 0
        return lo - pad, hi + pad

    def _ticks(self, lo: float, hi: float) -> list[tuple[float, str]]:
        if self.log:
            return [(10.0**e, f"{10 ** e:,}") for e in range(round(math.log10(lo)), round(math.log10(hi)) + 1)]
        step = _nice_step((hi - lo) / 6)
        first = math.ceil(lo / step) * step
        return [(t, f"{t:g}") for t in np.arange(first, hi + step * 1e-6, step)]


def _nice_step(raw: float) -> float:
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)


def _esc(text: str) -> str:
    return html.escape(str(text), quote=True)


def _color(c: Comparison, variant: str) -> str:
    order = [c.baseline, *c.variants]
    return COLORS[order.index(variant) % len(COLORS)] if variant in order else "#333333"


def _legend(c: Comparison, rows: list[dict]) -> dict[str, str]:
    present = {r["variant"] for r in rows}
    return {v: _color(c, v) for v in [c.baseline, *c.variants] if v in present}


# -- the report's plots -------------------------------------------------------------------------


def all_plots(c: Comparison) -> dict[str, str]:
    """Plot key -> inline SVG, for the plots that have data."""
    makers = {"deltas": deltas, "tokens": token_lengths, "agreement": agreement_bars, "domains": domain_deltas,
              "experts": expert_heatmaps}
    return {key: svg for key, make in makers.items() if (svg := make(c)) is not None}


def deltas(c: Comparison) -> str | None:
    """Δ to the baseline with its 95% CI, per bench and variant."""
    board = c.rows("scoreboard")
    if not board:
        return None
    chart = RowChart([f"{r['bench']} · {r['variant']}" for r in board], f"Δ vs {c.baseline} (pp), 95% CI",
                     legend=_legend(c, board), zero_line=True)
    for i, r in enumerate(board):
        color, tip = _color(c, r["variant"]), f"{r['delta_pp']:+.2f}pp [{r['ci_low_pp']:+.2f}, {r['ci_high_pp']:+.2f}]"
        chart.whisker(i, r["ci_low_pp"], r["ci_high_pp"], color, tip)
        chart.dot(i, r["delta_pp"], color, tip)
    return chart.svg("deltas")


def token_lengths(c: Comparison) -> str | None:
    """Completion length per bench and variant: p10-p90 bar, p50 dot, max cross (log scale)."""
    rows = [r for r in c.rows("tokens") if r["measure"] == "completion"]
    if not rows:
        return None
    order = {v: i for i, v in enumerate([c.baseline, *c.variants])}
    rows.sort(key=lambda r: (c.benches.index(r["bench"]) if r["bench"] in c.benches else 0, order.get(r["variant"], 99)))
    chart = RowChart([f"{r['bench']} · {r['variant']}" for r in rows],
                     "completion tokens (bar p10-p90, dot p50, cross max)", log=True, legend=_legend(c, rows))
    for i, r in enumerate(rows):
        color = _color(c, r["variant"])
        tip = f"p10 {r['p10']:,.0f}, p50 {r['p50']:,.0f}, p90 {r['p90']:,.0f}, max {r['max']:,.0f}"
        chart.range(i, max(r["p10"], 1), max(r["p90"], 1), color, tip)
        chart.dot(i, max(r["p50"], 1), color, tip)
        chart.cross(i, max(r["max"], 1), color, tip)
    return chart.svg("tokens")


def agreement_bars(c: Comparison) -> str | None:
    """Per bench and variant: shares of both correct, both wrong, lost and gained problems."""
    rows = c.rows("agreement")
    if not rows:
        return None
    legend = {k.replace("_", " "): color for k, color in OUTCOME_COLORS.items()}
    chart = RowChart([f"{r['bench']} · {r['variant']}" for r in rows],
                     f"share of problems (%); lost = only {c.baseline} right, gained = only the variant right",
                     lo=0, hi=100, legend=legend)
    for i, r in enumerate(rows):
        left = 0.0
        for kind, color in OUTCOME_COLORS.items():
            chart.bar(i, left, left + r[f"{kind}_pct"], color, title=f"{kind.replace('_', ' ')}: {r[kind]}")
            left += r[f"{kind}_pct"]
    return chart.svg("agreement")


def domain_deltas(c: Comparison) -> str | None:
    """Δ per domain and subdomain, per variant (subdomains pale)."""
    rows = c.rows("domains")
    if not rows:
        return None
    labels = [f"{r['bench']} · {r['variant']} · " + (r["domain"] if r["level"] == "domain" else f"  {r['subdomain']}")
              + f" (n={r['n']})" for r in rows]
    chart = RowChart(labels, f"Δ vs {c.baseline} (pp); pale bars: subdomains", legend=_legend(c, rows), zero_line=True)
    for i, r in enumerate(rows):
        chart.bar(i, 0.0, r["delta_pp"], _color(c, r["variant"]), 1.0 if r["level"] == "domain" else 0.5,
                  title=f"{r['delta_pp']:+.1f}pp, lost {r['lost']}, gained {r['gained']}")
    return chart.svg("domains")


def expert_heatmaps(c: Comparison) -> str | None:
    """Per bench and variant, one layer x expert grid per domain: the baseline's mean share of each
    layer's routing weight on every expert the variant dropped (white 0, red the largest of that
    bench and variant; kept experts grey)."""
    rows = c.rows("expert_usage") if "expert_usage" in c.tables else []
    if not rows:
        return None
    groups: dict[tuple[str, str], dict[str, list[dict]]] = {}
    for r in rows:
        groups.setdefault((r["bench"], r["variant"]), {}).setdefault(r["domain"], []).append(r)
    layers = sorted({r["layer"] for r in rows})
    experts = max(r["expert"] for r in rows) + 1
    cell = max(3.0, min(12.0, 360 / experts))
    label_w = CHAR * len(str(max(layers))) + 8
    grid_w, grid_h = cell * experts, cell * len(layers)
    panel_w = max(label_w + grid_w, CHAR * max(len(d) for g in groups.values() for d in g) + 8) + 2 * PAD
    panel_h = 16 + grid_h + 18 + PAD
    per_row = max(1, int(1000 // panel_w))
    width = 2 * PAD + panel_w * min(per_row, max(len(g) for g in groups.values()))
    y = PAD
    out = []
    for (bench, variant), panels in groups.items():
        top = max(r["share"] for cells in panels.values() for r in cells) or 1.0
        out.append(f'<text x="{PAD}" y="{y + 12}" fill="#222" font-weight="bold">{_esc(f"{bench} · {variant}")}'
                   f'<tspan font-weight="normal"> — rows: MoE layers, columns: experts; red = {100 * top:.1f}% of the '
                   f'layer\'s routing weight, grey: kept</tspan></text>')
        y += LEGEND
        for n, (domain, cells) in enumerate(panels.items()):
            x0 = PAD + panel_w * (n % per_row) + label_w
            y0 = y + panel_h * (n // per_row)
            out.append(f'<text x="{x0}" y="{y0 + 11}" fill="#222">{_esc(domain)}</text>')
            gy = y0 + 16
            out.append(f'<rect x="{x0}" y="{gy}" width="{grid_w:.1f}" height="{grid_h:.1f}" fill="#e6e6e6"/>')
            for li, layer in enumerate(layers):
                if li % max(1, len(layers) // 6) == 0:
                    out.append(f'<text x="{x0 - 3}" y="{gy + cell * (li + 0.85):.1f}" text-anchor="end" '
                               f'font-size="9" fill="#555">{layer}</text>')
            for e in range(0, experts, max(1, experts // 8)):
                out.append(f'<text x="{x0 + cell * (e + 0.5):.1f}" y="{gy + grid_h + 11:.1f}" text-anchor="middle" '
                           f'font-size="9" fill="#555">{e}</text>')
            for r in cells:
                shade = 255 - round(255 * min(1.0, r["share"] / top))
                out.append(f'<rect x="{x0 + cell * r["expert"]:.1f}" y="{gy + cell * layers.index(r["layer"]):.1f}" '
                           f'width="{cell:.1f}" height="{cell:.1f}" fill="rgb(255,{shade},{shade})" stroke="#bbbbbb" '
                           f'stroke-width="0.3"><title>{_esc(domain)}: layer {r["layer"]}, expert {r["expert"]}: '
                           f'{100 * r["share"]:.2f}%</title></rect>')
        y += panel_h * -(-len(panels) // per_row) + PAD
    width = max(width, 2 * PAD + CHAR * 90)
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="expert heatmaps" width="{width:.0f}" '
            f'height="{y:.0f}" viewBox="0 0 {width:.0f} {y:.0f}" font-family="sans-serif" font-size="{FONT}">'
            f'<rect x="0" y="0" width="{width:.0f}" height="{y:.0f}" fill="white"/>')
    return "\n".join([head, *out, "</svg>"])
