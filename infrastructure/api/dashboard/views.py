"""What the dashboard's pages show, shaped from the read models' rows: pure functions, no I/O.

A queue's row (state, progress, counts, rate and ETA), its chart (an SVG drawn here, no library), its
activity and failed lines, the stores' webhooks and last sync. The templates and the live JSON both take
these shapes, so a row refreshed by the page's script says exactly what the first render said.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape
from typing import Any

# A queue in one of these states is still expected to move (its ETA is worth showing).
ACTIVE_STATES = frozenset({"draft", "processing"})
# The chart's outcomes, in the legend's order, with a colour (WCAG AA against white) and a dash pattern, so
# the lines differ without colour too.
OUTCOMES: tuple[tuple[str, str, str], ...] = (
    ("created", "#1a7f37", ""),
    ("updated", "#0b5cad", "6 3"),
    ("unchanged", "#6b5300", "2 3"),
    ("failed", "#b3261e", "10 3 2 3"),
)
# The chart keeps at most this many points (the last one always): a million-line queue draws as fast.
CHART_POINTS = 120
CHART_WIDTH, CHART_HEIGHT = 640, 240
_PAD_LEFT, _PAD_RIGHT, _PAD_TOP, _PAD_BOTTOM = 56, 16, 16, 36
NOTHING = "—"


def parse_time(text: str | None) -> datetime | None:
    """An ISO-8601 time of the read models (with offset); None for None or anything unreadable."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def utc_iso(text: str | None) -> str | None:
    """The time as ``<time datetime>`` takes it: UTC, seconds, ``Z``."""
    moment = parse_time(text)
    return None if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def utc_title(text: str | None) -> str:
    """The time as its hover title shows it: ``2026-12-01 14:03:11 UTC``."""
    moment = parse_time(text)
    return "" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def duration(seconds: float) -> str:
    """A short human duration: ``45 s``, ``3 min 20 s``, ``2 h 05 min``, ``3 d 4 h``."""
    whole = max(0, round(seconds))
    if whole < 60:
        return f"{whole} s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes:02d} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


# ----- a queue's row ---------------------------------------------------------------------------------


def finished_lines(status: Mapping[str, Any]) -> int:
    """Lines the queue has processed, whatever their outcome: done, cancelled or failed."""
    return int(status["doneCount"]) + int(status["cancelledCount"]) + int(status["failedCount"])


def average_rate(status: Mapping[str, Any], now: datetime) -> float | None:
    """Lines per second of a queue in its first run, averaged since that run began (``lastProcessDate`` is
    when the latest run began): the figure before the live samples (``Rates``) span enough time. None for
    a later run (the lines finished before it would count) or a queue not moving."""
    started = parse_time(status.get("lastProcessDate"))
    processed = finished_lines(status)
    if status.get("state") not in ACTIVE_STATES or started is None or processed <= 0:
        return None
    if int(status.get("processCount") or 0) != 1:
        return None
    seconds = (now - started).total_seconds()
    return processed / seconds if seconds >= 1 else None


class Rates:
    """The queues' recent rates, from the finished-line counts each read of them sees (every page and every
    poll of every viewer): lines per second over the last ``window_s``, once the samples span
    ``min_span_s``. Memory is bounded (``max_queues``, the least recently seen forgotten first). Not
    thread-safe: the loop's thread calls it. Times are the caller's monotonic seconds."""

    def __init__(self, window_s: float = 30.0, min_span_s: float = 3.0, max_queues: int = 1000) -> None:
        self.window_s = window_s
        self.min_span_s = min_span_s
        self.max_queues = max_queues
        self._samples: OrderedDict[str, deque[tuple[float, int]]] = OrderedDict()

    def observe(self, queue_id: str, processed: int, now: float) -> float | None:
        """Record a read of the queue; its rate over the window, or None while the samples span too little
        (or the count went back: a rebuilt read model)."""
        samples = self._samples.get(queue_id)
        if samples is None:
            samples = self._samples[queue_id] = deque()
            while len(self._samples) > self.max_queues:
                self._samples.popitem(last=False)
        else:
            self._samples.move_to_end(queue_id)
        if samples and processed < samples[-1][1]:
            samples.clear()
        samples.append((now, processed))
        while len(samples) > 2 and now - samples[1][0] >= self.window_s:
            samples.popleft()
        span = now - samples[0][0]
        if span < self.min_span_s:
            return None
        return (processed - samples[0][1]) / span


def rate_text(rate: float | None) -> str:
    if rate is None:
        return NOTHING
    return f"{rate:,.1f} lines/s" if rate < 100 else f"{rate:,.0f} lines/s"


def eta_text(status: Mapping[str, Any], rate: float | None) -> str:
    """Time left at the average rate, for a queue still moving whose total is known; ``done`` once done."""
    state = status.get("state")
    if state == "done":
        return "done"
    total = int(status["totalCount"])
    left = total - finished_lines(status)
    if state not in ACTIVE_STATES or rate is None or rate <= 0 or total <= 0 or left <= 0:
        return NOTHING
    return duration(math.ceil(left / rate))  # lines left are never "0 s" away


def queue_row(status: Mapping[str, Any], rate: float | None = None) -> dict[str, Any]:
    """A queue as the Queues table (and its live refresh) shows it; ``rate``: its recent lines per second
    (``Rates``), else the average of its run (a queue not moving has none)."""
    if status.get("state") not in ACTIVE_STATES:
        rate = None
    elif rate is None:
        rate = average_rate(status, datetime.now(UTC))
    total = int(status["totalCount"])
    return {
        "queueId": str(status["queueId"]),
        "state": str(status["state"]),
        "store": status.get("storeUrl") or "",
        "processed": finished_lines(status),
        "total": total,
        "done": int(status["doneCount"]),
        "failed": int(status["failedCount"]),
        "progress": float(status.get("progress") or 0.0),
        "rate": rate_text(rate),
        "eta": eta_text(status, rate),
        "reason": (status.get("actionRequiredReason") or "") if status.get("isActionRequired") else "",
        "createdAt": utc_iso(status.get("createdAt")),
        "createdTitle": utc_title(status.get("createdAt")),
        "isRunning": bool(status.get("isRunning")),
    }


def queue_counts(status: Mapping[str, Any]) -> dict[str, int]:
    """The queue page's counts (``#counts``)."""
    return {
        name: int(status[f"{name}Count"])
        for name in ("created", "updated", "unchanged", "failed", "done", "total", "cancelled")
    }


# ----- activity and failed lines ---------------------------------------------------------------------------


def activity_entry(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "type": str(row["activityType"]),
        "status": str(row["status"]),
        "message": str(row["message"]),
        "at": utc_iso(row.get("createdAt")),
        "title": utc_title(row.get("createdAt")),
    }


def failed_line(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "lineId": int(row["wooCustomerId"]),
        "error": row.get("errorMessage") or "",
        "attempts": int(row.get("processCount") or 0),
        "at": utc_iso(row.get("lastErrorTimestamp")),
        "title": utc_title(row.get("lastErrorTimestamp")),
    }


# ----- the chart -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Point:
    at: datetime
    counts: tuple[int, ...]  # cumulative, in OUTCOMES' order


def progress_points(buckets: Iterable[Mapping[str, Any]]) -> list[Point]:
    """Cumulative lines by outcome over time from the database's per-slice sums (queries.progress_buckets:
    a batch's counts by result, a page's lines added unchanged, each failed attempt, so a line retried and
    failed again counts twice): one point per slice, at most CHART_POINTS."""
    totals = [0 for _ in OUTCOMES]
    points: list[Point] = []
    for bucket in buckets:
        at = parse_time(bucket.get("at"))
        if at is None:
            continue
        for index, (name, _, _) in enumerate(OUTCOMES):
            totals[index] += _count(bucket.get(name))
        points.append(Point(at, tuple(totals)))
    return points


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def chart_svg(points: Sequence[Point]) -> str:
    """The chart as SVG markup (every text in it escaped): a line per outcome, time across, lines up; a
    title and description for screen readers saying the final counts."""
    final = points[-1].counts if points else tuple(0 for _ in OUTCOMES)
    summary = ", ".join(f"{count} {name}" for (name, _, _), count in zip(OUTCOMES, final, strict=True))
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {CHART_WIDTH} {CHART_HEIGHT}" role="img" '
        f'aria-labelledby="chart-title chart-desc" data-points="{len(points)}">',
        '<title id="chart-title">Lines done over time, by outcome</title>',
        f'<desc id="chart-desc">{escape(summary)}</desc>',
    ]
    left, right = _PAD_LEFT, CHART_WIDTH - _PAD_RIGHT
    top, bottom = _PAD_TOP, CHART_HEIGHT - _PAD_BOTTOM
    parts.append(
        f'<path class="axis" d="M{left},{top} V{bottom} H{right}" fill="none" stroke="#444" stroke-width="1"/>'
    )
    peak = max((max(p.counts) for p in points), default=0) or 1
    start = points[0].at if points else None
    span = (points[-1].at - points[0].at).total_seconds() if len(points) > 1 else 0.0
    for index, (name, colour, dashes) in enumerate(OUTCOMES):
        path = _line(points, index, peak, start, span, (left, right, top, bottom))
        dash = f' stroke-dasharray="{dashes}"' if dashes else ""
        parts.append(
            f'<path data-outcome="{name}" d="{path}" fill="none" stroke="{colour}" stroke-width="2"{dash}/>'
        )
    parts.append(f'<text x="{left - 6}" y="{top + 4}" text-anchor="end" font-size="12">{peak}</text>')
    parts.append(f'<text x="{left - 6}" y="{bottom}" text-anchor="end" font-size="12">0</text>')
    if points:
        parts.append(_time_label(points[0].at, left, ""))
        if span:
            parts.append(_time_label(points[-1].at, right, ' text-anchor="end"'))
    parts.append("</svg>")
    return "".join(parts)


def _time_label(moment: datetime, x: int, anchor: str) -> str:
    """A time under the chart, in UTC; the page's script shows it in the viewer's zone (``data-time``), the
    UTC value kept as its tooltip (``title``)."""
    utc = utc_title(moment.isoformat())
    iso = utc_iso(moment.isoformat()) or ""
    return (
        f'<text x="{x}" y="{CHART_HEIGHT - 10}"{anchor} font-size="12" data-time="{escape(iso)}">'
        f"<title>{escape(utc)}</title>{escape(utc)}</text>"
    )


def _line(
    points: Sequence[Point],
    index: int,
    peak: int,
    start: datetime | None,
    span: float,
    box: tuple[int, int, int, int],
) -> str:
    left, right, top, bottom = box
    if not points or start is None:
        return f"M{left},{bottom} H{right}"
    steps = []
    for number, point in enumerate(points):
        x = left + ((point.at - start).total_seconds() / span if span else 1.0) * (right - left)
        y = bottom - point.counts[index] / peak * (bottom - top)
        steps.append(f"{'M' if number == 0 else 'L'}{x:.1f},{y:.1f}")
    if len(points) == 1:
        steps.insert(0, f"M{left},{bottom}")
        steps[1] = "L" + steps[1][1:]
    return " ".join(steps)


# ----- stores ------------------------------------------------------------------------------------------


def webhook_states(store: Mapping[str, Any], not_active: Mapping[str, str], topics: Sequence[str]) -> str:
    """Each webhook's status as last seen (``customer.created active, ...``), or that none is installed."""
    if not store.get("webhooksInstalled"):
        return "not installed"
    return ", ".join(f"{topic} {not_active.get(topic, 'active')}" for topic in topics)


def schedule_text(schedules: Sequence[Mapping[str, Any]]) -> str:
    """A store's schedules (one at most): ``every 1h, next 2026-...`` or ``none``."""
    if not schedules:
        return "none"
    shown = []
    for schedule in schedules:
        period = f"every {schedule['every']}" if schedule.get("every") else f"cron {schedule.get('cron')}"
        shown.append(f"{period}, next {utc_title(schedule.get('nextDueAt')) or NOTHING}")
    return "; ".join(shown)


def outcome_text(status: Mapping[str, Any] | None) -> str:
    """The last sync's outcome in a few words."""
    if status is None:
        return "never synced"
    state = str(status["state"])
    failed = int(status["failedCount"])
    if status.get("isActionRequired"):
        return f"{state}, action required"
    if failed:
        return f"{state}, {failed} failed"
    return state
