"""A fan-out without per-row triggers (PostgreSQL only; measured in README "Job fan-out").

A foreign key is checked by a trigger on every inserted row: with the three of job_executions, a
fan-out of 100,000 executions ran 300,000 trigger calls, most of its time. On PostgreSQL they are
dropped, and their integrity is kept another way:

- tenant: an execution's tenant is its job's (both INSERTs take it from the job), and jobs.tenant_id
  keeps its foreign key, so a tenant with executions cannot be deleted (Django's PROTECT too).
- job and device: executions are only inserted by INSERT ... SELECT from device_state, for a job
  inserted (job_create) or locked (continuous_reconcile) in the same transaction, so both exist when
  the rows go in. Deleting a job or a device (which the platform never does: devices are
  decommissioned) is still cascaded by Django (on_delete), and a statement-level trigger refuses any
  other DELETE that would leave executions behind: one check per DELETE statement, none per insert.

SQLite keeps the foreign keys: the default test suite still checks every row it writes.
Django's model state still says db_constraint=True; an AlterField of these fields does not bring the
constraints back (none is found to drop and re-create), and jobs/tests/test_integrity.py pins the
schema.

The job foreign key's own index goes on every backend: uniq_job_executions_job_device leads with job.
"""

from django.db import migrations, models

FOREIGN_KEYS = (("tenant_id", "tenants"), ("job_id", "jobs"), ("device_id", "device_state"))
PARENTS = (("device_state", "device_id"), ("jobs", "job_id"))  # deletes checked by a statement trigger


def _refuse_orphans_sql(parent: str, column: str) -> list[str]:
    function, trigger = f"job_executions_refuse_orphans_{parent}", f"job_executions_orphans_{parent}"
    return [
        f"""CREATE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF EXISTS (SELECT 1 FROM job_executions e JOIN gone ON e.{column} = gone.id) THEN
                RAISE foreign_key_violation USING MESSAGE = 'delete on table ' || TG_TABLE_NAME
                    || ' leaves rows of job_executions behind (job_executions.{column})';
            END IF;
            RETURN NULL;
        END $$""",
        f"CREATE TRIGGER {trigger} AFTER DELETE ON {parent} REFERENCING OLD TABLE AS gone "
        f"FOR EACH STATEMENT EXECUTE FUNCTION {function}()",
    ]


def forward(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for column, parent in FOREIGN_KEYS:
        for name in _foreign_keys(schema_editor, column, parent):
            schema_editor.execute(f'ALTER TABLE job_executions DROP CONSTRAINT "{name}"')
    for parent, column in PARENTS:
        for statement in _refuse_orphans_sql(parent, column):
            schema_editor.execute(statement)


def backward(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for parent, _ in PARENTS:
        schema_editor.execute(f"DROP TRIGGER job_executions_orphans_{parent} ON {parent}")
        schema_editor.execute(f"DROP FUNCTION job_executions_refuse_orphans_{parent}()")
    for column, parent in FOREIGN_KEYS:
        schema_editor.execute(
            f"ALTER TABLE job_executions ADD CONSTRAINT job_executions_{column}_fk_{parent} FOREIGN KEY ({column}) "
            f"REFERENCES {parent}(id) DEFERRABLE INITIALLY DEFERRED"
        )


def _foreign_keys(schema_editor, column: str, parent: str) -> list[str]:
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.conname FROM pg_constraint c JOIN pg_attribute a ON a.attrelid = c.conrelid "
            "AND a.attnum = ANY(c.conkey) WHERE c.conrelid = 'job_executions'::regclass AND c.contype = 'f' "
            "AND a.attname = %s AND c.confrelid = %s::regclass",
            [column, parent],
        )
        return [row[0] for row in cursor.fetchall()]


class Migration(migrations.Migration):
    dependencies = [("jobs", "0011_batched_revert")]

    operations = [
        migrations.AlterField(
            model_name="jobexecution",
            name="job",
            field=models.ForeignKey(
                db_index=False, on_delete=models.deletion.CASCADE, related_name="executions", to="jobs.job"
            ),
        ),
        migrations.RunPython(forward, backward),
    ]
