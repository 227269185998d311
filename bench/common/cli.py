"""The shape every bench/<name>/run.py shares: options, --smoke, a database, cleanup, exit codes.

    def options(p): p.add_argument("--devices", type=int, default=1000)
    def bench(args, run):                     # run: Run (below)
        db = run.database()                   # locked, recreated, migrated; dropped after a smoke run
        web = run.start(servers.Gunicorn(...))  # stopped at the end, also on Ctrl-C or an error
        report = run.report(config=...)
        ...
        return report.finish(args.fail_on_missed_goals)
    sys.exit(cli.main("http_device_api", __doc__, options, bench, smoke={"devices": 20, "duration": 1}))

Common options: --smoke (the `smoke` sizes, results in bench/results/smoke/, database
iotcloud_bench_smoke_<name>_<pid> dropped at the end), --database-url, --output, --label,
--fail-on-missed-goals. Exit status: 0 done (goals met or not), 1 the run was not valid
(errors, lost messages; or a missed goal with --fail-on-missed-goals), 2 could not run
(BenchError: a message, no traceback), 130 interrupted. A smoke run without PostgreSQL,
Mosquitto or wrk says what it skipped and exits 0, except in CI (REQUIRE_BENCH=1 or CI set).
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from bench.common import BenchError, Unavailable, app, cpu, db, log, report, required

BUSY_WARNING_PCT = 25.0


class Run:
    def __init__(self, name: str, args: argparse.Namespace):
        self.name, self.args, self.smoke = name, args, args.smoke
        self.database_url = args.database_url or db.default_url(name, smoke=args.smoke)
        self.stack = contextlib.ExitStack()
        self.workdir = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
        self.stack.callback(shutil.rmtree, self.workdir, ignore_errors=True)
        self.busy_before = None if args.smoke else cpu.machine_busy_pct(1.0)
        if self.busy_before is not None and self.busy_before > BUSY_WARNING_PCT:
            log(f"warning: the machine is {self.busy_before:.0f}% busy before the run: figures will be low")

    def database(self) -> db.Database:
        return self.stack.enter_context(db.Database(self.database_url, drop_after=self.smoke))

    def env(self, **extra: str) -> dict[str, str]:
        return app.env(self.database_url, **extra)

    def start(self, child):
        """Enter a server's context (servers.Gunicorn(...), servers.Bridge(...)): stopped when the run ends."""
        return self.stack.enter_context(child)

    def report(self, name: str | None = None, config: dict | None = None) -> report.Report:
        r = report.Report(
            name or self.name, smoke=self.smoke, output=self.args.output, label=self.args.label,
            config={**(config or {}), "database": db.redact(self.database_url),
                    "machine_busy_pct_before": self.busy_before},
        )  # fmt: skip
        return r


def parser(doc: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=doc.strip().splitlines()[0], epilog=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--smoke", action="store_true", help="tiny sizes, a few seconds: checks the benchmark still works")
    p.add_argument(
        "--database-url", help="its database, dropped and recreated (default: iotcloud_bench_<name> on the server "
        "of BENCH_DATABASE_SERVER or DATABASE_URL, else postgres://postgres@127.0.0.1:5432)",
    )  # fmt: skip
    p.add_argument("--output", type=Path, help="JSON results file (default bench/results[/smoke]/<name>.json)")
    p.add_argument("--label", default="", help="free text stored with the results (what you changed)")
    p.add_argument("--fail-on-missed-goals", action="store_true", help="exit 1 when a goal is missed")
    return p


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(
    name: str,
    doc: str,
    options: Callable[[argparse.ArgumentParser], None],
    bench: Callable[[argparse.Namespace, Run], int],
    smoke: dict,
    argv: list[str] | None = None,
    check: Callable[[argparse.ArgumentParser, argparse.Namespace], None] | None = None,
) -> int:
    p = parser(doc)
    options(p)
    args = p.parse_args(argv)
    if args.smoke:  # the smoke sizes become the defaults; options given explicitly still win
        p.set_defaults(**smoke)
        args = p.parse_args(argv)
    if check is not None:
        check(p, args)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        run = Run(name, args)
        with run.stack:
            return bench(args, run)
    except Unavailable as exc:
        if args.smoke and not required():
            print(f"skipped {name}: {exc}")
            return 0
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
