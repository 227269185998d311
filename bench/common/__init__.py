"""The benchmarks' library: what every bench/<name>/run.py needs, so each script is only its experiment.

db       a PostgreSQL database per run (name always contains "bench"), migrated from a template
seed     tenants and devices in bulk (the one place that knows the app's models)
servers  gunicorn, the MQTT bridge, a private Mosquitto (optionally with a TLS listener) and nginx
         as a TLS terminator, as child processes
ingest   the MQTT ingest experiment's publishers and bridge phase (mqtt_ingest, tls), plain or TLS
wrk      wrk scenarios (Lua), runs and their parsed output
cpu      CPU seconds per process group during a measured phase (/proc)
report   tables of what was achieved, goals, JSON in bench/results/<name>.json
cli      the common options (--smoke ...), exit codes, cleanup on Ctrl-C
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench"
RESULTS = BENCH / "results"
SMOKE_RESULTS = RESULTS / "smoke"  # git-ignored (bench/.gitignore): smoke runs never touch the real results


class BenchError(Exception):
    """A failure with a message for the person running the benchmark (exit 2, no traceback)."""


class Unavailable(BenchError):
    """A prerequisite is missing (PostgreSQL, Mosquitto, wrk): a smoke run skips, unless required()."""


def required() -> bool:
    """Must every prerequisite be there? In CI (REQUIRE_BENCH=1, or CI set) a smoke run may not skip."""
    return any(os.environ.get(k, "").lower() not in ("", "0", "false", "no") for k in ("REQUIRE_BENCH", "CI"))


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)
