"""`field__any_of=[...]`: membership in a long list passed as ONE query parameter.

`__in` spends one placeholder per value: 100,000 of them are slow to build,
exceed SQLite's variable limit, and `IN (SELECT unnest(...))` misleads the
PostgreSQL planner on freshly loaded tables. `= ANY(array)` is an index scan.
"""

import json

from django.db.models import CharField, Lookup


@CharField.register_lookup
class AnyOf(Lookup):
    lookup_name = "any_of"
    prepare_rhs = False

    def as_sql(self, compiler, connection):
        lhs, lhs_params = self.process_lhs(compiler, connection)
        values = [str(v) for v in self.rhs]
        if connection.vendor == "postgresql":
            return f"{lhs} = ANY(%s::text[])", [*lhs_params, values]
        return f"{lhs} IN (SELECT value FROM json_each(%s))", [*lhs_params, json.dumps(values)]  # noqa: S608 (lhs: a compiled column)
