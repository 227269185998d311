"""Run the benchmarks one after the other (make bench), or each at a tiny size (make bench-smoke).

    .venv/bin/python bench/all.py [--smoke] [name ...]   # default: all of BENCHMARKS

Each runs as its own process (bench/<name>/run.py, plus bench/job_fanout/whatif.py with
--smoke, so the experiments do not rot either); the next one starts only when the
previous one has stopped its servers. Ends with the seconds and exit status of each;
exits 1 when any failed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
BENCHMARKS = [
    "http_device_api", "desired_latency", "desired_latency_http", "mqtt_ingest", "mqtt_shadow_rtt", "job_fanout",
    "admin_pages", "rollout", "tls", "fleet_size",
]  # fmt: skip
SMOKE_ONLY = {"job_fanout_whatif": "job_fanout/whatif.py"}
# A benchmark run another way (its own results file): name -> (its script, its arguments, and with --smoke).
VARIANTS = {
    "desired_latency_http": ("desired_latency/run.py", ["--via", "http", "--rate", "1000"], ["--via", "http"]),
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes, a few seconds each")
    p.add_argument("names", nargs="*", help=f"a subset of {', '.join(BENCHMARKS)}")
    args = p.parse_args()
    names = args.names or BENCHMARKS + (list(SMOKE_ONLY) if args.smoke else [])
    scripts = {name: BENCH / (VARIANTS[name][0] if name in VARIANTS else SMOKE_ONLY.get(name, f"{name}/run.py"))
               for name in names}  # fmt: skip
    if unknown := [name for name, path in scripts.items() if not path.exists()]:
        p.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS + list(SMOKE_ONLY))}")
    done = []
    started = time.monotonic()
    for name, script in scripts.items():
        print(f"\n=== {name}{' (smoke)' if args.smoke else ''} ===", flush=True)
        t0 = time.monotonic()
        extra = VARIANTS[name][2 if args.smoke else 1] if name in VARIANTS else []
        cmd = [sys.executable, str(script), *(["--smoke"] if args.smoke else []), *extra]
        status = subprocess.run(cmd, check=False).returncode
        done.append((name, time.monotonic() - t0, status))
    print(f"\n{'benchmark':<20} {'seconds':>8}  status")
    for name, seconds, status in done:
        print(f"{name:<20} {seconds:>8.1f}  {'ok' if status == 0 else f'FAILED (exit {status})'}")
    print(f"{'total':<20} {time.monotonic() - started:>8.1f}")
    return 1 if any(status for _, _, status in done) else 0


if __name__ == "__main__":
    sys.exit(main())
