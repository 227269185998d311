"""Job templates: named, versioned job documents with defaults that a job is created from.

A job names a template as "<name>" (its latest version) or "<name>@<version>"; the tenant's own
templates come first, then the built-ins below. The job takes the template's document_type, its
document_params with the job's own params over them, and each configuration the job does not give
(rollout, abort_config, retry_config, in_progress_timeout_seconds); the params must end up with
every key the template requires. Saving a template makes its next version; versions never change.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from django.db import IntegrityError, transaction
from django.db.models import Max

from devices.models import Tenant
from iotcloud.errors import Conflict, InvalidInput, NotFound
from iotcloud.rules import DOCUMENT_TYPE, JOB_ID, fits_int32
from jobs.choices import DESIRED_PATCH
from jobs.models import JobTemplate
from jobs.retry import parse_retry_for
from jobs.rollout import parse_abort, parse_rollout


@dataclass(frozen=True)
class Template:
    name: str
    version: int
    document_type: str
    document_params: dict = field(default_factory=dict)
    required_params: tuple[str, ...] = ()
    description: str = ""
    rollout: dict = field(default_factory=dict)
    abort_config: dict = field(default_factory=dict)
    retry_config: dict = field(default_factory=dict)
    in_progress_timeout_seconds: int | None = None
    builtin: bool = False

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def params_for(self, given: dict | None) -> dict:
        """The job's document_params: the template's defaults with the job's own over them."""
        params = {**self.document_params, **(given or {})}
        missing = [key for key in self.required_params if params.get(key) in (None, "")]
        if missing:
            raise InvalidInput(
                f"Template {self.ref} needs document_params {', '.join(map(repr, missing))}",
                code="missing_template_params", missing=missing,
            )  # fmt: skip
        return params


BUILTINS = {
    template.name: template
    for template in (
        Template("reboot", 1, "reboot", {"delay_seconds": 0}, description="Restart the device.", builtin=True),
        Template(
            "download-file", 1, "download_file", {"path": ""}, ("url", "sha256"),
            description="Download a file by URL (https) and check it against its SHA-256 before using it; "
            'params: {"url", "sha256", "path"}.',
            retry_config={"criteria": [{"failure_type": "FAILED", "number_of_retries": 2}]}, builtin=True,
        ),
        Template(
            "apply-desired-patch", 1, DESIRED_PATCH, {"shadow": ""}, ("patch",),
            description='Apply a desired-state merge patch to each device\'s twin, in waves (jobs.desired); params: '
            '{"patch": {...}, "shadow": "<name>" (blank: the classic shadow)}.',
            in_progress_timeout_seconds=3600, builtin=True,
        ),
    )
}  # fmt: skip


def template_resolve(tenant: Tenant, ref) -> Template:
    """The template a job names ("<name>" or "<name>@<version>"); NotFound / InvalidInput naming it."""
    if not isinstance(ref, str) or not ref:
        raise InvalidInput('template must be "<name>" or "<name>@<version>"', code="invalid_template")
    name, _, version = ref.partition("@")
    if version and not (version.isdigit() and fits_int32(int(version))):
        raise InvalidInput(f"template {ref[:100]!r}: the version must be a number", code="invalid_template")
    if not JOB_ID.matches(name):  # cannot exist; also keeps NUL bytes away from PostgreSQL
        raise NotFound(f"No job template {ref[:100]!r} in tenant {tenant.id!r}", code="template_not_found")
    rows = JobTemplate.objects.filter(tenant=tenant, name=name)
    row = rows.filter(version=int(version)).first() if version else rows.order_by("-version").first()
    if row is not None:
        return template_of(row)
    builtin = BUILTINS.get(name)
    if builtin is not None and (not version or int(version) == builtin.version):
        return builtin
    raise NotFound(f"No job template {ref[:100]!r} in tenant {tenant.id!r}", code="template_not_found")


def templates_of(tenant: Tenant) -> list[Template]:
    """The latest version of each of the tenant's templates, then the built-ins it does not shadow."""
    own: dict[str, Template] = {}
    for row in JobTemplate.objects.filter(tenant=tenant).order_by("name", "-version"):
        own.setdefault(row.name, template_of(row))
    return list(own.values()) + [t for name, t in sorted(BUILTINS.items()) if name not in own]


def template_check(
    *,
    name,
    document_type,
    document_params=None,
    required_params=None,
    rollout=None,
    abort_config=None,
    retry_config=None,
    in_progress_timeout_seconds=None,
) -> tuple[dict, list]:
    """A template's fields checked by the rules a job's meet (InvalidInput naming the field); returns its
    params and required params as stored. (The admin's form calls it to show errors inline.)"""
    from jobs.services import MAX_TIMEOUT_SECONDS, check_document_params

    if not isinstance(name, str) or not JOB_ID.matches(name):
        raise InvalidInput(f"Invalid template name {name!r}: use {JOB_ID.text}", code="invalid_template")
    if not isinstance(document_type, str) or not DOCUMENT_TYPE.matches(document_type):
        raise InvalidInput(f"document_type: use {DOCUMENT_TYPE.text}", code="invalid_document_type")
    params = check_document_params(document_params if document_params is not None else {})
    required = required_params or []
    if not isinstance(required, list) or not all(isinstance(k, str) and k for k in required) or len(required) > 50:
        raise InvalidInput("required_params must be a list of at most 50 parameter names", code="invalid_template")
    parse_rollout(rollout)
    parse_abort(abort_config)
    parse_retry_for(document_type, retry_config)
    if in_progress_timeout_seconds is not None and not 1 <= in_progress_timeout_seconds <= MAX_TIMEOUT_SECONDS:
        raise InvalidInput(
            f"in_progress_timeout_seconds must be between 1 and {MAX_TIMEOUT_SECONDS}", code="invalid_timeout"
        )
    return params, required


@transaction.atomic
def template_save(*, tenant: Tenant, name: str, document_type: str, document_params: dict | None = None,
                  required_params: list | None = None, description: str = "", rollout: dict | None = None,
                  abort_config: dict | None = None, retry_config: dict | None = None,
                  in_progress_timeout_seconds: int | None = None, actor: str = "") -> JobTemplate:  # fmt: skip
    """Save the next version of a tenant's template (the first: version 1); the new row."""
    params, required = template_check(
        name=name, document_type=document_type, document_params=document_params, required_params=required_params,
        rollout=rollout, abort_config=abort_config, retry_config=retry_config,
        in_progress_timeout_seconds=in_progress_timeout_seconds,
    )  # fmt: skip
    current = JobTemplate.objects.select_for_update().filter(tenant=tenant, name=name).aggregate(v=Max("version"))
    try:
        with transaction.atomic():
            return JobTemplate.objects.create(
                tenant=tenant, name=name, version=(current["v"] or 0) + 1, description=description,
                document_type=document_type, document_params=params, required_params=required,
                rollout=rollout or {}, abort_config=abort_config or {}, retry_config=retry_config or {},
                in_progress_timeout_seconds=in_progress_timeout_seconds, created_by=actor[:160],
            )  # fmt: skip
    except IntegrityError:  # another save of the same name took this version first
        raise Conflict(f"Template {name!r} was saved concurrently; save again", code="concurrent_update") from None


def template_of(row: JobTemplate) -> Template:
    """A stored version as a Template."""
    return Template(
        row.name, row.version, row.document_type, row.document_params, tuple(row.required_params), row.description,
        row.rollout, row.abort_config, row.retry_config, row.in_progress_timeout_seconds,
    )  # fmt: skip
