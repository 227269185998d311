"""What a run achieved: printed tables and bench/results/<name>.json (smoke runs: bench/results/smoke/).

    report = run.report("desired_latency", config={...})
    report.rate("desired writes", achieved=187.4, unit="writes/s", target=200)   # target shown beside, never instead
    report.goal("delivery p99", achieved=12.7, target=25, unit="ms", met=12.7 <= 25)
    report.problem("3 deliveries missing")                                      # the run is invalid: exit 1
    report.data["latency_ms"] = {...}                                           # anything else, into the JSON
    return report.finish()                                                      # prints the summary, writes JSON

Every figure is what was measured in this run. A smoke run (tiny sizes) shows the same
summary but judges no goal: its figures only show the benchmark works.
"""

from __future__ import annotations

import json
import os
import platform
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from bench.common import REPO, RESULTS, SMOKE_RESULTS, log

VERSIONS = ("django", "djangorestframework", "gunicorn", "psycopg", "paho-mqtt")


def percentile(values, p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def table(headers: list[str], rows: list[list]) -> str:
    """A plain-text table: first column left-aligned, the others right-aligned."""
    cells = [[str(c) for c in row] for row in [headers, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        lines.append(
            "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        )
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def number(value, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        text = f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}" if abs(value) < 1 else f"{value:.1f}"
    else:
        text = f"{value:,}"
    return f"{text} {unit}".strip()


def versions() -> dict:
    out = {"python": platform.python_version()}
    for dist in VERSIONS:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def loadavg() -> str | None:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return None


class Report:
    def __init__(self, name: str, *, smoke: bool, output: Path | None = None, config: dict | None = None, label=""):
        self.name, self.smoke = name, smoke
        self.output = output or (SMOKE_RESULTS if smoke else RESULTS) / f"{name}.json"
        self.config = dict(config or {})
        self.label = label
        self.rates: list[dict] = []
        self.goals: list[dict] = []
        self.problems: list[str] = []
        self.data: dict = {}
        self.started = datetime.now(UTC)

    def rate(self, what: str, *, achieved: float, unit: str, target: float | None = None, note: str = "") -> None:
        """A rate the run achieved (and the rate it aimed at, if it aimed at one)."""
        self.rates.append({"what": what, "achieved": achieved, "target": target, "unit": unit, "note": note})

    def goal(self, what: str, *, achieved, target, met: bool, unit: str = "", relation: str = "<=") -> None:
        self.goals.append(
            {"goal": f"{what} {relation} {number(target, unit)}", "achieved": achieved, "target": target,
             "unit": unit, "met": bool(met) and not self.problems}
        )  # fmt: skip

    def problem(self, message: str) -> None:
        """The run is not valid (errors, lost messages...): shown, stored, exit status 1."""
        self.problems.append(message)
        for g in self.goals:
            g["met"] = False

    def summary(self) -> str:
        lines = []
        if self.rates:
            rows = [
                [r["what"], number(r["achieved"], r["unit"]), number(r["target"], r["unit"]), r["note"]]
                for r in self.rates
            ]
            lines += ["", table(["rate", "achieved", "target", ""], rows)]
        if self.goals:
            verdict = "n/a (smoke)" if self.smoke else None
            rows = [
                [g["goal"], number(g["achieved"], g["unit"]), verdict or ("met" if g["met"] else "MISSED")]
                for g in self.goals
            ]
            lines += ["", table(["goal", "achieved", ""], rows)]
        for p in self.problems:
            lines.append(f"! {p}")
        if self.smoke:
            lines.append("(smoke run: tiny sizes, the figures only show that the benchmark works)")
        return "\n".join(lines)

    def finish(self, fail_on_missed_goals: bool = False) -> int:
        print(self.summary())
        payload = {
            "benchmark": self.name,
            "date": self.started.isoformat(timespec="seconds"),
            "smoke": self.smoke,
            "label": self.label,
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "loadavg": loadavg()},
            "versions": versions(),
            "config": self.config,
            "achieved": self.rates,
            "goals": self.goals,
            "problems": self.problems,
            **self.data,
        }
        self.output.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.output.with_name(self.output.name + f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
        tmp.replace(self.output)
        try:
            shown = self.output.resolve().relative_to(REPO)
        except ValueError:
            shown = self.output
        log(f"wrote {shown}")
        if self.problems:
            return 1
        if fail_on_missed_goals and not self.smoke and not all(g["met"] for g in self.goals):
            return 1
        return 0
