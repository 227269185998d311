"""The README's benchmark tables, generated from bench/results/*.json: nobody types a figure by hand.

    .venv/bin/python bench/readme_tables.py           # rewrite the generated blocks of README.md
    .venv/bin/python bench/readme_tables.py --check   # exit 1 if README.md is not what the results say (make lint)

README.md marks each generated block:

    <!-- bench:http_device_api -->   ... what bench/results/http_device_api.json achieved ...   <!-- /bench -->
    <!-- bench:goals -->             ... every goal of every result, met or missed ...          <!-- /bench -->

A benchmark's block shows when and where it ran, each rate it achieved beside the one it aimed at, its own
tables if it wrote any (`tables`: [{"title", "headers", "rows"}], cells as it printed them), each goal
with its verdict, and the run's problems (an invalid run says so; its goals count as missed). Only
results in the common format (bench/common/report.Report: `achieved`, `goals`) are rendered; the prose
around the blocks explains them.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common.report import number

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
README = REPO / "README.md"
BLOCK = re.compile(r"(<!-- bench:(?P<name>[a-z0-9_.]+) -->\n)(?P<body>.*?)(<!-- /bench -->)", re.S)
GOALS = "goals"


class TablesError(Exception):
    pass


def load(name: str) -> dict:
    path = RESULTS / f"{name}.json"
    shown = path.relative_to(REPO) if path.is_relative_to(REPO) else path
    if not path.is_file():
        raise TablesError(f"README.md has a block for {name!r} but {shown} does not exist")
    try:
        result = json.loads(path.read_text())
    except ValueError as exc:
        raise TablesError(f"{shown} is not JSON: {exc}") from None
    if not isinstance(result.get("achieved"), list) or not isinstance(result.get("goals"), list):
        raise TablesError(f"{shown} is not in the common format (no 'achieved' and 'goals' lists)")
    return result


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _markdown(headers: list[str], rows: list[list], right_from: int = 1) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(
        "---:" if i >= right_from else "---" for i in range(len(headers))) + " |"]  # fmt: skip
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def verdict(result: dict, goal: dict) -> str:
    if result.get("smoke"):
        return "n/a (smoke run)"
    return "**met**" if goal.get("met") else "**missed**"


def when(result: dict) -> str:
    machine = result.get("machine") or {}
    busy = (result.get("config") or {}).get("machine_busy_pct_before")
    parts = [f"measured {str(result.get('date', '?'))[:16].replace('T', ' ')} UTC"]
    if machine.get("cpus"):
        parts.append(f"{machine['cpus']} CPUs")
    if busy is not None:
        parts.append(f"machine {busy:.0f}% busy before the run")
    if result.get("label"):
        parts.append(f"label: {result['label']}")
    return ", ".join(parts)


def benchmark_block(name: str) -> list[str]:
    result = load(name)
    lines = [f"*`{result.get('benchmark', name)}`, {when(result)} (`bench/results/{name}.json`):*", ""]
    if result["achieved"]:
        rows = [[r["what"], number(r["achieved"], r.get("unit", "")), number(r.get("target"), r.get("unit", "")),
                 r.get("note") or ""] for r in result["achieved"]]  # fmt: skip
        lines += _markdown(["rate", "achieved", "aimed at", ""], rows)
        lines.append("")
    for extra in result.get("tables") or []:  # its own tables (e.g. a column per fleet size), as it printed them
        if extra.get("title"):
            lines += [f"{extra['title']}:", ""]
        lines += _markdown(extra["headers"], extra["rows"])
        lines.append("")
    if result["goals"]:
        rows = [[g["goal"], number(g["achieved"], g.get("unit", "")), verdict(result, g)] for g in result["goals"]]
        lines += _markdown(["goal", "achieved", ""], rows)
        lines.append("")
    for problem in result.get("problems") or []:
        lines.append(f"**This run is not valid**: {problem}")
        lines.append("")
    return lines


def goals_block(names: list[str]) -> list[str]:
    rows = []
    for name in names:
        result = load(name)
        for goal in result["goals"]:
            rows.append([f"`{name}`", goal["goal"], number(goal["achieved"], goal.get("unit", "")),
                         verdict(result, goal), str(result.get("date", "?"))[:10]])  # fmt: skip
    if not rows:
        return ["(no benchmark with goals has results yet)", ""]
    return [*_markdown(["benchmark", "goal", "achieved", "", "measured"], rows, right_from=2), ""]


def render(readme: str) -> str:
    blocks = list(BLOCK.finditer(readme))
    names = [m["name"] for m in blocks if m["name"] != GOALS]
    out, position = [], 0
    for match in blocks:
        body = goals_block(names) if match["name"] == GOALS else benchmark_block(match["name"])
        out += [readme[position : match.end(1)], "\n".join(body) + "\n", match.group(4)]
        position = match.end()
    out.append(readme[position:])
    return "".join(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if README.md differs from what the results say")
    parser.add_argument("--readme", type=Path, default=README)
    args = parser.parse_args(argv)
    current = args.readme.read_text()
    try:
        wanted = render(current)
    except TablesError as exc:
        print(f"bench/readme_tables.py: {exc}", file=sys.stderr)
        return 2
    if args.check:
        if wanted != current:
            print("README.md's benchmark tables are not what bench/results/ says: run "
                  ".venv/bin/python bench/readme_tables.py", file=sys.stderr)  # fmt: skip
            return 1
        return 0
    if wanted != current:
        args.readme.write_text(wanted)
        print(f"README.md: {len(BLOCK.findall(current))} generated block(s) rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
