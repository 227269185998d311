"""One PostgreSQL database per run, dropped and recreated, migrated; its name always contains "bench".

Migrating takes seconds, so the first run migrates a template database
(iotcloud_bench_template_<hash of the migrations and requirements.txt>) and every run
clones it (CREATE DATABASE ... TEMPLATE, well under a second). A change to any
migration makes a new template; the old ones are dropped.

Full runs use iotcloud_bench_<benchmark>; smoke runs iotcloud_bench_smoke_<benchmark>_<pid>,
dropped at the end, so a smoke run (make test) never collides with a full run or another
smoke run. The server is BENCH_DATABASE_SERVER, else DATABASE_URL's when it is PostgreSQL,
else postgres://postgres@127.0.0.1:5432.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import time
import urllib.parse

from bench.common import REPO, BenchError, Unavailable, app, log

DEFAULT_SERVER = "postgres://postgres@127.0.0.1:5432"
TEMPLATE_PREFIX = "iotcloud_bench_template_"
SMOKE_PATTERN = re.compile(r"^iotcloud_bench_smoke_\w+_(\d+)$")
# DATABASE_URL query options that django-environ turns into Django settings (not libpq parameters).
DJANGO_DB_OPTIONS = {
    "conn_max_age",
    "atomic_requests",
    "autocommit",
    "disable_server_side_cursors",
    "conn_health_checks",
}
START_HINT = "start it (Debian): pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"


def server_url() -> str:
    for candidate in (os.environ.get("BENCH_DATABASE_SERVER"), os.environ.get("DATABASE_URL")):
        if candidate and urllib.parse.urlsplit(candidate).scheme in ("postgres", "postgresql", "pgsql"):
            return urllib.parse.urlunsplit(urllib.parse.urlsplit(candidate)._replace(path="", query=""))
    return DEFAULT_SERVER


def default_url(benchmark: str, *, smoke: bool) -> str:
    name = f"iotcloud_bench_smoke_{benchmark}_{os.getpid()}" if smoke else f"iotcloud_bench_{benchmark}"
    return f"{server_url()}/{name}"


def name_of(url: str) -> str:
    return urllib.parse.unquote(urllib.parse.urlsplit(url).path.lstrip("/"))


def redact(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.password:
        return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")))
    return url


def libpq_url(url: str, dbname: str | None = None) -> str:
    """The URL for psycopg: without django-environ's own query options, optionally another database."""
    parts = urllib.parse.urlsplit(url)
    query = [(k, v) for k, v in urllib.parse.parse_qsl(parts.query) if k.lower() not in DJANGO_DB_OPTIONS]
    path = f"/{urllib.parse.quote(dbname)}" if dbname is not None else parts.path
    return urllib.parse.urlunsplit(parts._replace(path=path, query=urllib.parse.urlencode(query)))


def connect(url: str):
    import psycopg

    try:
        return psycopg.connect(libpq_url(url), autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        raise Unavailable(f"cannot reach PostgreSQL at {redact(url)}: {exc}\n  {START_HINT}") from None


def migrations_key() -> str:
    """A hash of everything that decides the migrated schema: the apps' migrations and the pinned packages."""
    digest = hashlib.sha256((REPO / "requirements.txt").read_bytes())
    for top in sorted(p for p in REPO.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
        if top.name in ("bench", "var", "test-artifacts", "node_modules", "docs", "templates"):
            continue
        for path in sorted(top.rglob("migrations/*.py")):
            digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


class Database:
    """A benchmark's database: `with Database(url, drop_after=smoke) as db:` locks, recreates, migrates."""

    def __init__(self, url: str, *, drop_after: bool = False):
        if urllib.parse.urlsplit(url).scheme not in ("postgres", "postgresql", "pgsql"):
            raise BenchError(f"--database-url must be a PostgreSQL URL, got {redact(url)}")
        self.url, self.name, self.drop_after = url, name_of(url), drop_after
        if "bench" not in self.name:
            raise BenchError(
                f"refusing to drop database {self.name!r}: a benchmark recreates its database on every run, "
                "so its name must contain 'bench'"
            )
        self.admin_url = libpq_url(url, "postgres")
        self._admin = None
        self.info: dict = {}

    def __enter__(self) -> Database:
        self._admin = connect(self.admin_url)
        if not self._try_lock(f"bench:{self.name}"):
            self.close()
            raise BenchError(
                f"another benchmark run is using database {self.name!r}; wait for it, "
                "or give this one its own: --database-url postgres://.../iotcloud_bench_other"
            )
        try:
            self.recreate()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        app.close_connections()
        if self.drop_after:
            with contextlib.suppress(Exception):
                self._ddl("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)
        self.close()

    def close(self) -> None:
        if self._admin is not None:
            with contextlib.suppress(Exception):
                self._admin.close()  # ends the session: releases the advisory locks
            self._admin = None

    def _ddl(self, statement: str, *names: str) -> None:
        """A statement on database names ({} placeholders), quoted as identifiers."""
        from psycopg import sql

        self._admin.execute(sql.SQL(statement).format(*(sql.Identifier(n) for n in names)))

    def _try_lock(self, key: str) -> bool:
        return self._admin.execute("SELECT pg_try_advisory_lock(hashtext(%s))", [key]).fetchone()[0]

    def _exists(self, name: str) -> bool:
        return bool(self._admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone())

    def recreate(self) -> None:
        """Drop the database and clone it from the migrated template (made first when needed)."""
        app.close_connections()
        self._drop_stale_smoke_databases()
        started = time.monotonic()
        a = self._admin
        a.execute("SELECT pg_advisory_lock(hashtext('bench:template'))")  # one builder, no clone mid-build
        try:
            template = self._template()
            self._ddl("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)
            self._ddl("CREATE DATABASE {} TEMPLATE {}", self.name, template)
        finally:
            a.execute("SELECT pg_advisory_unlock(hashtext('bench:template'))")
        self.info = {
            "database": redact(self.url),
            "postgres": a.execute("SHOW server_version").fetchone()[0],
            "max_connections": int(a.execute("SHOW max_connections").fetchone()[0]),
            "template": template,
        }
        log(f"database {self.name!r} recreated from {template} in {time.monotonic() - started:.1f} s")

    def _template(self) -> str:
        name = TEMPLATE_PREFIX + migrations_key()
        if self._exists(name):
            return name
        building = name + "_building"
        log(f"migrating a new template database {name} (once per change to the migrations)")
        self._ddl("DROP DATABASE IF EXISTS {} WITH (FORCE)", building)
        self._ddl("CREATE DATABASE {}", building)
        url = libpq_url(self.url, building)
        seconds = app.manage("migrate", "--noinput", "-v0", environ=app.env(url), what="manage.py migrate")
        self._ddl("ALTER DATABASE {} RENAME TO {}", building, name)
        log(f"template migrated in {seconds:.1f} s")
        for (old,) in self._admin.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s AND datname <> %s", [TEMPLATE_PREFIX + "%", name]
        ).fetchall():
            with contextlib.suppress(Exception):
                self._ddl("DROP DATABASE {} WITH (FORCE)", old)
        return name

    def _drop_stale_smoke_databases(self) -> None:
        """Smoke databases of runs that were killed before they could drop theirs (their pid is gone)."""
        for (name,) in self._admin.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE 'iotcloud_bench_smoke_%'"
        ).fetchall():
            m = SMOKE_PATTERN.match(name)
            if not m or int(m.group(1)) == os.getpid():
                continue
            try:
                os.kill(int(m.group(1)), 0)
            except ProcessLookupError:
                with contextlib.suppress(Exception):
                    self._ddl("DROP DATABASE IF EXISTS {}", name)  # not FORCE: in use means alive
            except PermissionError:
                pass

    def query(self, sql: str, params=None) -> list[tuple]:
        """Rows of one statement on the benchmark database (its own short connection)."""
        with connect(self.url) as conn:
            cur = conn.execute(sql, params)
            return cur.fetchall() if cur.description else []

    def row_updates(self, table: str) -> tuple[int, int]:
        """(updates, of them HOT: in place, no index touched) of a table so far (same publishing delay as commits)."""
        rows = self.query("SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = %s", [table])
        return rows[0] if rows else (0, 0)

    def commits(self) -> tuple[int, object]:
        """Transactions committed in this database so far, and the database clock.

        PostgreSQL publishes a backend's counters when it goes idle, at most once a second:
        read them a second or so after the load stops, and treat per-request figures as approximate.
        """
        rows = self.query(
            "SELECT xact_commit, clock_timestamp() FROM pg_stat_database WHERE datname = current_database()"
        )
        return rows[0] if rows else (0, None)
