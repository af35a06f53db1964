"""The status page's usage chart: inline SVG, made by a pure function from billing.rpc.usage's rows.

The pages' CSP (`default-src 'none'; style-src 'self'`) allows no script, no `style` attribute and no `<style>`
element, so everything here is markup: geometry in SVG attributes, colours by class from static/style.css (the
same class colours a bar and its legend swatch). SVG presentation attributes such as `fill="none"` are attributes,
not styles: the CSP does not apply to them.

What the chart shows, and why two panels. The bars are tokens per day, stacked by model; the plan's limit is per
month (the billing period). A monthly cap drawn across daily bars would sit far above them (100K against days of a
few thousand) and suggest a daily ceiling that does not exist; bars scaled up to the cap would be slivers. So the
chart has two panels on one time axis:
- "Total so far": the running total of the period as a line, and the limit as a horizontal line on the same scale.
  Where the line will meet the limit is the question a user has ("will I run out before it resets?").
- "Per day, by model": where the tokens went, day by day, on a scale of its own.
No second y-axis on one panel: two scales in one plot are misread more often than two labelled plots.

Every number drawn is also in the markup for machines and screen readers: `data-*` attributes on the bars, a
`<title>`/`<desc>` (role="img"), and a `<details>` table with every day's numbers.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Protocol

from markupsafe import Markup, escape

OTHER = "other"  # billing's name for the models past the query's limit
MAX_MODELS = 5  # the top models each get a colour; the rest are folded into OTHER
UNKNOWN = "(unknown)"

# Geometry, in viewBox units. Narrow on purpose: the SVG is scaled to the page's width (100%), and a narrow viewBox
# keeps its text readable on a phone.
WIDTH = 360
LEFT, RIGHT = 40, 6  # room for the y labels on the left
PLOT_WIDTH = WIDTH - LEFT - RIGHT
TOTAL_TOP, TOTAL_BASE = 22, 92  # the running-total panel
DAILY_TOP, DAILY_BASE = 124, 234  # the per-day panel
X_LABELS = 250
HEIGHT = 258
BAR_SHARE = 0.72  # of a day's slot; the rest is the gap


class UsageRowLike(Protocol):
    """What the chart reads of a polar_billing_client.contracts.UsageRow."""

    @property
    def day(self) -> date | None: ...

    @property
    def model(self) -> str | None: ...

    @property
    def billable_tokens(self) -> int: ...


@dataclass(frozen=True)
class Series:
    name: str  # the model, as billing names it ("other" for the rest)
    css: str  # its colour class: s0…s4, or so for "other"
    total: int

    @property
    def label(self) -> str:
        return "Other models" if self.name == OTHER else self.name


@dataclass(frozen=True)
class Day:
    day: date
    tokens: dict[str, int]  # series name -> billable tokens; only the series with tokens that day
    total: int
    cumulative: int  # the period's running total at the end of the day
    future: bool  # after today: nothing yet, drawn empty, left out of the table


@dataclass(frozen=True)
class ChartData:
    start: date
    end: date  # not included
    days: list[Day]
    series: list[Series]  # bottom of the stack first: the largest model, …, "other" last
    total: int
    limit: int | None  # the plan's tokens per period; None = no limit (no line)

    @property
    def past(self) -> list[Day]:
        return [d for d in self.days if not d.future]


def chart_data(rows: Iterable[UsageRowLike], start: date, end: date, *, limit: int | None = None,
               today: date | None = None, max_models: int = MAX_MODELS) -> ChartData:
    """Billable tokens by day and model, for every day from `start` to `end` (not included), zeros included."""
    by_day: dict[date, dict[str, int]] = {}
    for row in rows:
        if row.day is None or not start <= row.day < end or row.billable_tokens <= 0:
            continue
        name = row.model if row.model is not None else UNKNOWN
        cell = by_day.setdefault(row.day, {})
        cell[name] = cell.get(name, 0) + row.billable_tokens
    totals: dict[str, int] = {}
    for cell in by_day.values():
        for name, value in cell.items():
            totals[name] = totals.get(name, 0) + value
    ranked = sorted((n for n in totals if n != OTHER), key=lambda n: (-totals[n], n))
    kept, folded = ranked[:max_models], set(ranked[max_models:])
    other_total = totals.get(OTHER, 0) + sum(totals[n] for n in folded)
    series = [Series(n, f"s{i}", totals[n]) for i, n in enumerate(kept)]
    if other_total:
        series.append(Series(OTHER, "so", other_total))

    days: list[Day] = []
    running = 0
    for i in range((end - start).days):
        d = start + timedelta(days=i)
        stack: dict[str, int] = {}
        for name, value in by_day.get(d, {}).items():
            key = OTHER if name in folded else name
            stack[key] = stack.get(key, 0) + value
        total = sum(stack.values())
        running += total
        days.append(Day(d, stack, total, running, future=today is not None and d > today))
    return ChartData(start, end, days, series, running, limit)


# --- scales and labels -----------------------------------------------------------------------------------------
NICE_STEPS = (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10)


def nice_ceiling(value: float) -> int:
    """The axis maximum: the smallest of 1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8 x 10^k at or above `value` (at least
    10, so an empty chart still has a scale)."""
    if value <= 10:
        return 10
    power = 10 ** math.floor(math.log10(value))
    for step in NICE_STEPS:
        candidate = round(step * power)
        if candidate >= value:
            return candidate
    return 10 * power


def compact(n: int) -> str:
    """1,200 -> 1.2K, 1,500,000 -> 1.5M: axis labels."""
    for size, suffix in ((1_000_000_000, "B"), (1_000_000, "M"), (1_000, "K")):
        if abs(n) >= size:
            return f"{n / size:.2f}".rstrip("0").rstrip(".") + suffix
    return str(n)


def day_label(d: date) -> str:
    return f"{d:%b} {d.day}"


def range_label(start: date, end: date) -> str:
    """The days from `start` to `end` (not included), as a person reads a range: "Nov 1 – Nov 30, 2026"."""
    last = end - timedelta(days=1)
    if start == last:
        return f"{day_label(start)}, {start.year}"
    if start.year == last.year:
        return f"{day_label(start)} – {day_label(last)}, {last.year}"
    return f"{day_label(start)}, {start.year} – {day_label(last)}, {last.year}"


def _n(value: float) -> str:
    """A coordinate: at most two decimals, no trailing zeros."""
    return f"{value:.2f}".rstrip("0").rstrip(".") or "0"


def _attrs(**attrs: object) -> Markup:
    """Attributes, escaped; `data_x` is written data-x; None leaves one out."""
    parts = [f' {k.replace("_", "-")}="{escape(v)}"' for k, v in attrs.items() if v is not None]
    return Markup("".join(parts))


def _y(value: int, scale_max: int, top: float, base: float) -> float:
    return base - (base - top) * value / scale_max


# --- the SVG ---------------------------------------------------------------------------------------------------
def _description(data: ChartData) -> str:
    period = range_label(data.start, data.end)
    parts = [f"Billable tokens per day, {period}, stacked by model."]
    if data.limit is not None:
        share = round(100 * data.total / data.limit) if data.limit else 0
        parts.append(f"{data.total:,} tokens so far, of a limit of {data.limit:,} for the period ({share}%).")
    else:
        parts.append(f"{data.total:,} tokens so far; no limit for the period.")
    busiest = max(data.days, key=lambda d: d.total, default=None)
    if busiest is not None and busiest.total:
        parts.append(f"Busiest day: {day_label(busiest.day)}, {busiest.total:,} tokens.")
    if data.series:
        parts.append("By model: " + "; ".join(f"{s.label} {s.total:,}" for s in data.series) + ".")
    parts.append("The table after the chart lists every day.")
    return " ".join(parts)


def _svg(data: ChartData, prefix: str) -> Markup:
    n = max(1, len(data.days))
    slot = PLOT_WIDTH / n
    bar = max(1.0, slot * BAR_SHARE)
    total_max = nice_ceiling(max(data.total, data.limit or 0) * 1.1)  # headroom: the limit never sits on the top
    daily_max = nice_ceiling(max((d.total for d in data.days), default=0))
    out: list[str] = [
        (f'<svg role="img" aria-labelledby="{prefix}-title {prefix}-desc" viewBox="0 0 {WIDTH} {HEIGHT}" '
         'width="100%" preserveAspectRatio="xMidYMid meet" class="usage-chart">'),
        f'<title id="{prefix}-title">Tokens per day, {escape(range_label(data.start, data.end))}</title>',
        f'<desc id="{prefix}-desc">{escape(_description(data))}</desc>',
    ]
    future = [i for i, d in enumerate(data.days) if d.future]
    if future:  # the rest of the period, shaded: the x-axis is the whole period, so the user sees how much is left
        x0 = LEFT + future[0] * slot
        band = _attrs(x=_n(x0), y=TOTAL_TOP, width=_n(LEFT + PLOT_WIDTH - x0), height=DAILY_BASE - TOTAL_TOP)
        out.append(f'<rect class="future-band"{band}><title>Rest of the period</title></rect>')

    def axis(top: int, base: int, scale_max: int, title: str, cls: str) -> None:
        out.append(f'<g class="panel {cls}"{_attrs(data_top=top, data_baseline=base, data_max=scale_max)}>')
        out.append(f'<text class="panel-title"{_attrs(x=LEFT, y=top - 8)}>{escape(title)}</text>')
        for value in (0, scale_max // 2, scale_max):
            y = _n(_y(value, scale_max, top, base))
            out.append(f'<line class="grid"{_attrs(x1=LEFT, x2=LEFT + PLOT_WIDTH, y1=y, y2=y)}/>')
            out.append(f'<text class="axis"{_attrs(x=LEFT - 4, y=y, text_anchor="end", dominant_baseline="middle")}>'
                       f'{escape(compact(value))}</text>')

    # The running total, and the limit on the same scale.
    axis(TOTAL_TOP, TOTAL_BASE, total_max, "Total so far" + (" vs. your limit" if data.limit is not None else ""),
         "total-panel")
    if data.limit is not None:
        y = _n(_y(data.limit, total_max, TOTAL_TOP, TOTAL_BASE))
        line = _attrs(data_limit=data.limit, x1=LEFT, x2=LEFT + PLOT_WIDTH, y1=y, y2=y)
        out.append(f'<line class="limit-line"{line}><title>Limit: {data.limit:,} tokens per period</title></line>')
        # Above the line, away from the running total: on the right while the period is young (the line has not
        # got there yet), on the left later (where the total was still low).
        young = sum(1 for d in data.days if not d.future) <= n // 2
        label = _attrs(x=LEFT + PLOT_WIDTH - 4 if young else LEFT + 4, y=_n(float(y) - 3),
                       text_anchor="end" if young else None)
        out.append(f'<text class="limit-label"{label}>Limit {escape(compact(data.limit))}</text>')
    past = [(i, d) for i, d in enumerate(data.days) if not d.future]
    if past:
        points = " ".join(f"{_n(LEFT + (i + 0.5) * slot)},{_n(_y(d.cumulative, total_max, TOTAL_TOP, TOTAL_BASE))}"
                          for i, d in past)
        last_i, last = past[-1]
        out.append(f'<polyline class="cumulative"{_attrs(fill="none", points=points, data_tokens=last.cumulative)}/>')
        cx, cy = _n(LEFT + (last_i + 0.5) * slot), _n(_y(last.cumulative, total_max, TOTAL_TOP, TOTAL_BASE))
        out.append(f'<circle class="cumulative-end"{_attrs(cx=cx, cy=cy, r=2.5)}><title>{last.cumulative:,} tokens '
                   f'so far</title></circle>')
    out.append("</g>")

    # Tokens per day, stacked by model: the largest model at the bottom, "other" on top.
    axis(DAILY_TOP, DAILY_BASE, daily_max, "Per day, by model", "daily-panel")
    for i, d in enumerate(data.days):
        x = _n(LEFT + i * slot + (slot - bar) / 2)
        cls = "day future" if d.future else "day"
        group = _attrs(data_day=d.day.isoformat(), data_tokens=d.total,
                       data_cumulative=None if d.future else d.cumulative)
        out.append(f'<g class="{cls}"{group}>')
        if not d.total:  # an empty day is a bar of height 0: it is there, with its zero, for whoever reads the data
            empty = _attrs(data_day=d.day.isoformat(), data_tokens=0, x=x, y=DAILY_BASE, width=_n(bar), height=0)
            out.append(f'<rect class="seg empty"{empty}/>')
        below = 0
        for s in data.series:
            tokens = d.tokens.get(s.name, 0)
            if not tokens:
                continue
            # From the running sums, not segment by segment: rounding never drifts up the stack.
            y_bottom = _y(below, daily_max, DAILY_TOP, DAILY_BASE)
            below += tokens
            y_top = _y(below, daily_max, DAILY_TOP, DAILY_BASE)
            seg = _attrs(data_day=d.day.isoformat(), data_model=s.name, data_tokens=tokens, x=x, y=_n(y_top),
                         width=_n(bar), height=_n(y_bottom - y_top))
            out.append(f'<rect class="seg {s.css}"{seg}>'
                       f'<title>{escape(day_label(d.day))} · {escape(s.label)}: {tokens:,} tokens</title></rect>')
        out.append("</g>")
    out.append("</g>")

    # Day labels: the first, the last and today, when there is room between them.
    labels: list[tuple[int, str]] = [(0, "start"), (n - 1, "end")]
    today = len(past) - 1
    if past and data.days[-1].future and 3 <= today <= n - 4:
        labels.append((today, "middle"))
    for i, anchor in labels[: len(data.days)]:
        x = _n(LEFT + (i + 0.5) * slot if anchor == "middle" else (LEFT if anchor == "start" else LEFT + PLOT_WIDTH))
        text = "today" if anchor == "middle" else day_label(data.days[i].day)
        out.append(f'<text class="axis"{_attrs(x=x, y=X_LABELS, text_anchor=anchor)}>{escape(text)}</text>')
    out.append("</svg>")
    return Markup("".join(out))


def _legend(data: ChartData) -> Markup:
    if not data.series:
        return Markup('<p class="muted small legend-empty">No tokens used in this period yet.</p>')
    items = "".join(f'<li{_attrs(data_model=s.name)}><span class="swatch {s.css}" aria-hidden="true"></span>'
                    f'{escape(s.label)} '
                    f'<span class="muted">{s.total:,}</span></li>' for s in data.series)
    return Markup(f'<ul class="legend">{items}</ul>')


def _table(data: ChartData, prefix: str) -> Markup:
    head = "".join(f'<th scope="col">{escape(s.label)}</th>' for s in data.series)
    body = []
    for d in data.past:
        cells = "".join(f"<td>{d.tokens.get(s.name, 0):,}</td>" for s in data.series)
        body.append(f'<tr{_attrs(data_day=d.day.isoformat())}><th scope="row">{escape(day_label(d.day))}</th>'
                    f"{cells}<td>{d.total:,}</td><td>{d.cumulative:,}</td></tr>")
    foot = "".join(f"<td>{s.total:,}</td>" for s in data.series)
    return Markup(
        f'<details class="chart-data" id="{prefix}-data"><summary>Every day’s numbers</summary>'
        f'<div class="table-wrap"><table><caption>Billable tokens per day, '
        f'{escape(range_label(data.start, data.end))}</caption>'
        f'<thead><tr><th scope="col">Day</th>{head}<th scope="col">Total</th><th scope="col">Running total</th></tr>'
        f'</thead><tbody>{"".join(body)}</tbody>'
        f'<tfoot><tr><th scope="row">Period</th>{foot}<td>{data.total:,}</td><td></td></tr></tfoot>'
        "</table></div></details>")


def render_chart(data: ChartData, *, prefix: str = "usage") -> Markup:
    """The figure: the SVG, its legend, and every day's numbers in a table."""
    return Markup(f'<figure class="chart" id="{escape(prefix)}">{_svg(data, escape(prefix))}{_legend(data)}'
                  f"{_table(data, escape(prefix))}</figure>")


def usage_chart(rows: Iterable[UsageRowLike], start: date, end: date, *, limit: int | None = None,
                today: date | None = None, prefix: str = "usage") -> Markup:
    return render_chart(chart_data(rows, start, end, limit=limit, today=today), prefix=prefix)

