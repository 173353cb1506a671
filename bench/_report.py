"""Timing loops, percentiles, tables with ratios, PASS/MISS targets and the JSON record.

Micro-benchmarks run every candidate of a table in the same process, interleaved: each
repetition times every candidate once, round-robin, so a burst of load from other
processes on the machine hits all candidates alike instead of one of them. The best
repetition is the headline figure (the least disturbed run of the same code); the
median shows how noisy the run was. Ratios are always computed between candidates of
the same run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import timeit
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "Candidate",
    "Section",
    "Settings",
    "Timing",
    "measure",
    "percentile",
    "render_table",
    "write_json",
]


@dataclasses.dataclass(frozen=True)
class Settings:
    """How long to measure: ``--quick`` trades precision for a shorter run."""

    quick: bool
    repeat: int  # interleaved repetitions of every candidate
    min_seconds: float  # the least time one repetition of one candidate takes

    @classmethod
    def make(cls, *, quick: bool) -> Settings:
        """The settings of a full or a quick run."""
        return cls(quick, repeat=15, min_seconds=0.005) if quick else cls(quick, 41, 0.01)


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One timed statement: ``stmt`` runs in ``namespace`` (bind methods there, not in it)."""

    label: str
    stmt: str
    namespace: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Timing:
    """Per-operation nanoseconds of one candidate."""

    label: str
    best_ns: float
    median_ns: float
    number: int  # operations per repetition
    repeat: int


def measure(candidates: Sequence[Candidate], settings: Settings) -> list[Timing]:
    """Time every candidate, interleaved, and return their per-operation figures."""
    timers = [timeit.Timer(c.stmt, globals=c.namespace) for c in candidates]
    numbers = [_calibrate(timer, settings.min_seconds) for timer in timers]
    samples: list[list[float]] = [[] for _ in candidates]
    for _ in range(settings.repeat):
        for timer, number, sample in zip(timers, numbers, samples, strict=True):
            sample.append(timer.timeit(number) / number * 1e9)
    return [
        Timing(c.label, min(s), statistics.median(s), n, settings.repeat)
        for c, n, s in zip(candidates, numbers, samples, strict=True)
    ]


def _calibrate(timer: timeit.Timer, min_seconds: float) -> int:
    """How many operations make one repetition last ``min_seconds`` (this also warms up)."""
    number = 1
    while True:
        took = timer.timeit(number)
        if took >= min_seconds * 0.8:
            return number
        number = max(number * 2, math.ceil(number * min_seconds / max(took, 1e-9)))


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by linear interpolation between closest ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table: the first column left-aligned, the others right-aligned."""
    widths = [max(len(str(row[i])) for row in [headers, *rows]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        parts = [
            str(cell).ljust(width) if i == 0 else str(cell).rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  " + "  ".join(parts).rstrip()

    rule = "  " + "  ".join("-" * width for width in widths)
    return "\n".join([line(headers), rule, *(line(row) for row in rows)])


def _ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}x" if base > 0 and math.isfinite(value) else "-"


class Section:
    """The printed tables, notes and targets of one benchmark, and their JSON record."""

    def __init__(self, name: str, title: str) -> None:
        self.name = name
        self.title = title
        self._lines: list[str] = []
        self.data: dict[str, Any] = {"title": title, "tables": [], "targets": [], "notes": []}

    def timings(self, caption: str, timings: Sequence[Timing], baseline: str) -> dict[str, Timing]:
        """Add a table of per-operation times with ratios to the ``baseline`` row."""
        by_label = {t.label: t for t in timings}
        base = by_label[baseline]
        rows = [
            [
                t.label,
                f"{t.best_ns:,.0f}",
                f"{t.median_ns:,.0f}",
                _ratio(t.best_ns, base.best_ns),
                _ratio(t.median_ns, base.median_ns),
            ]
            for t in timings
        ]
        headers = ["candidate", "best ns/op", "median ns/op", "ratio(best)", "ratio(median)"]
        self.table(f"{caption} (ratios vs {baseline})", headers, rows)
        self.data["tables"][-1]["timings"] = [dataclasses.asdict(t) for t in timings]
        return by_label

    def table(self, caption: str, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        """Add a table of already formatted cells."""
        self._lines += ["", f"  {caption}", render_table(headers, rows)]
        self.data["tables"].append({"caption": caption, "headers": list(headers), "rows": rows})

    def note(self, text: str) -> None:
        """Add a line of explanation."""
        self._lines.append(f"  note: {text}")
        self.data["notes"].append(text)

    def target(
        self, label: str, value: float, limit: float, unit: str = "", *, at_least: bool = False
    ) -> bool:
        """Add a PASS/MISS line for ``value <= limit`` (``>=`` with ``at_least``)."""
        passed = value >= limit if at_least else value <= limit
        verdict = "PASS" if passed else "MISS"
        sign = ">=" if at_least else "<="
        self._lines.append(
            f"  {verdict}  {label} = {value:.3g}{unit} (target {sign} {limit:g}{unit})"
        )
        self.data["targets"].append(
            {"label": label, "value": value, "limit": limit, "unit": unit, "passed": passed}
        )
        return passed

    def check(self, label: str, passed: bool, detail: str) -> bool:
        """Add a PASS/MISS line for a yes/no requirement."""
        verdict = "PASS" if passed else "MISS"
        self._lines.append(f"  {verdict}  {label}: {detail}")
        self.data["targets"].append({"label": label, "detail": detail, "passed": passed})
        return passed

    def render(self) -> str:
        """The section as printed."""
        heading = f"== {self.title} "
        return "\n".join([heading.ljust(100, "="), *self._lines, ""])


def write_json(path: Path, record: dict[str, Any]) -> None:
    """Write the run's record as strict JSON (NaN becomes null), for tools that compare runs."""
    text = json.dumps(_finite(record), indent=2, default=str, allow_nan=False)
    path.write_text(text + "\n", encoding="utf-8")


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value
