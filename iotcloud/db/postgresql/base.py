"""Django's PostgreSQL backend, with a health check that costs no round trip.

Django checks a persistent connection at the first query of every request (CONN_HEALTH_CHECKS) with
`SELECT 1`: on the device API, where a request is otherwise one indexed statement, that is a second
round trip and a second transaction on the server for every request. An idle connection the server
has not written to is still open (PostgreSQL sends nothing unasked on an idle session, except when
it closes it: a restart, a terminated backend, idle_session_timeout); so the check here looks at
the socket without waiting. Nothing to read: usable, no query. Something to read (the server's
goodbye, an EOF, a notice): Django's own `SELECT 1` decides, and a dead connection is replaced
before the request's first query, as before.
"""

from __future__ import annotations

import select

from django.db.backends.postgresql import base


class DatabaseWrapper(base.DatabaseWrapper):
    def is_usable(self):
        connection = self.connection
        if connection is None or connection.closed:
            return False
        try:
            readable, _, _ = select.select([connection.fileno()], [], [], 0)
        except (OSError, ValueError):  # the socket is gone
            return False
        return not readable or super().is_usable()
