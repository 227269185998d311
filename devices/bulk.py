"""Bulk provisioning's formats: the rows of an upload, the refusal that names them, the tokens file.

The API (devices.operator_views) and the admin (devices.admin) read uploads with these;
devices.services.devices_provision_bulk checks every row and creates them all or none. A row
keeps the number its user sees (the position in the JSON array, 1-based; the line in the CSV
file, the header being line 1), so a refusal names the rows to fix.

CSV: UTF-8 (a byte-order mark is fine), a header, then one device per line. `device_id` is
required; each `tag:<key>` column is a tag (an empty cell: the device has no such tag); any
other column is refused, so a misspelt header is an error and never a silent no-op:

    device_id,tag:site,tag:floor
    pump-1,paris,3
    pump-2,oslo,

Blank lines (and lines of empty cells, as spreadsheets export them) are skipped.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from iotcloud.errors import Conflict, DomainError, InvalidInput, PayloadTooLarge
from iotcloud.rules import TAG_KEY, Limit

CSV_DEVICE_ID = "device_id"
CSV_TAG_PREFIX = "tag:"
CSV_EXAMPLE = "device_id,tag:site,tag:floor"
TOKENS_HEADER = ("device_id", "provision_token")
ROWS_LISTED = 100  # a refusal lists this many rows; it says how many there are in all


@dataclass(frozen=True)
class BulkRow:
    """One device of an upload, as given: the service checks it."""

    number: int
    device_id: object
    tags: object = None
    error: str = ""  # why the row could not be read (shown with the other rows' errors)
    code: str = ""


@dataclass(frozen=True)
class RowError:
    row: int
    device_id: str
    detail: str
    code: str

    def as_dict(self) -> dict:
        return {"row": self.row, "device_id": self.device_id, "detail": self.detail, "code": self.code}


class RowsError(DomainError):
    """Rows of an upload refused, nothing created: RowsRefused (400) or RowsTaken (409).

    The body lists the rows (`rows`: the first ROWS_LISTED, each with its row number, device_id,
    detail and code), says how many were refused in all (`rows_refused`) and how many the upload
    had (`rows_total`); `errors` keeps them all.
    """

    def __init__(self, errors: Sequence[RowError], *, total: int):
        self.errors = list(errors)
        named = "; ".join(f"row {e.row}{f' ({e.device_id})' if e.device_id else ''}: {e.detail}" for e in errors[:3])
        more = f"; and {len(errors) - 3} more" if len(errors) > 3 else ""
        listed = f" (the first {ROWS_LISTED} are listed in `rows`)" if len(errors) > ROWS_LISTED else ""
        super().__init__(
            f"{len(errors)} of {total} row(s) refused, nothing was created: {named}{more}{listed}",
            rows=[e.as_dict() for e in errors[:ROWS_LISTED]],
            rows_refused=len(errors),
            rows_total=total,
        )


class RowsRefused(RowsError, InvalidInput):
    """Rows breaking a rule: a bad id or tags, an id given twice, an id the tenant has."""

    code = "invalid_rows"


class RowsTaken(RowsError, Conflict):
    """Ids the check found free, created by another request before this one's insert."""

    code = "device_exists"


def shown_id(device_id: object) -> str:
    """A row's device id for a message or a list of errors: as given, shortened; "" when it is not text."""
    if not isinstance(device_id, str):
        return ""
    return device_id if len(device_id) <= 130 else device_id[:130] + "..."


# --- JSON ------------------------------------------------------------------------------------------


def read_json(body) -> tuple[str | None, list[BulkRow]]:
    """`{"tenant"?: "...", "devices": [{"device_id": "...", "tags"?: {...}}, ...]}`: the tenant named, and the rows.

    The envelope must be right (else InvalidInput); a malformed element is a row with an error.
    """
    if not isinstance(body, dict):
        raise InvalidInput('Expected a JSON object: {"devices": [{"device_id": "...", "tags": {...}}, ...]}')
    unknown = sorted(set(body) - {"devices", "tenant"})
    if unknown:
        raise InvalidInput(f"Unknown field(s): {', '.join(map(repr, unknown))}; expected devices and tenant")
    tenant = body.get("tenant")
    if tenant is not None and not isinstance(tenant, str):
        raise InvalidInput("tenant must be a string (a tenant id)", code="invalid_tenant")
    devices = body.get("devices")
    if not isinstance(devices, list):
        raise InvalidInput(
            'devices must be an array of objects: [{"device_id": "...", "tags": {...}}, ...]', code="invalid_devices"
        )
    return tenant, [_json_row(number, item) for number, item in enumerate(devices, 1)]


def _json_row(number: int, item) -> BulkRow:
    if not isinstance(item, dict):
        return BulkRow(number, None, error='expected an object {"device_id": "...", "tags": {...}}', code="invalid_row")
    unknown = sorted(set(item) - {"device_id", "tags"})
    if unknown:
        return BulkRow(
            number,
            item.get("device_id"),
            error=f"unknown field(s) {', '.join(map(repr, unknown))}; expected device_id and tags",
            code="invalid_row",
        )
    if "device_id" not in item:
        return BulkRow(number, None, error="device_id is missing", code="invalid_device_id")
    return BulkRow(number, item["device_id"], item.get("tags"))


# --- CSV -------------------------------------------------------------------------------------------


def read_csv(raw: bytes, *, max_rows: Limit) -> list[BulkRow]:
    """The rows of a CSV file (the format is in the module's docstring).

    A file that cannot be read as a whole (not UTF-8, no header, unknown columns, broken quoting)
    is InvalidInput naming the problem; more than `max_rows` devices is PayloadTooLarge naming
    the limit; a line with the wrong number of cells is a row with an error.
    """
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise InvalidInput(
            f"The CSV file is not UTF-8 (line {line}: {exc.reason}); save it as CSV UTF-8", code="invalid_csv"
        ) from None
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
        if not header or not any(cell.strip() for cell in header):
            raise InvalidInput(
                f"The CSV file has no header: its first line names the columns, e.g. {CSV_EXAMPLE}",
                code="invalid_csv",
            )
        id_column, tag_columns = _csv_columns(header)
        rows: list[BulkRow] = []
        start = reader.line_num + 1
        for cells in reader:
            number, start = start, reader.line_num + 1
            if not any(cells):
                continue  # a blank line, or one of empty cells
            if len(rows) == max_rows:
                raise PayloadTooLarge(
                    f"The CSV file has more than {max_rows} devices, the limit ({max_rows.name}); split it",
                    code="too_many_rows",
                    limit=int(max_rows),
                )
            if len(cells) > len(header):
                error = f"{len(cells)} cells, but the header names {len(header)} columns"
                rows.append(BulkRow(number, cells[id_column], error=error, code="invalid_row"))
                continue
            cells += [""] * (len(header) - len(cells))  # cells missing at the end are empty, as in csv.DictReader
            tags = {key: cells[index] for index, key in tag_columns if cells[index] != ""}
            rows.append(BulkRow(number, cells[id_column], tags))
    except csv.Error as exc:
        message = f"The CSV file cannot be read at line {reader.line_num}: {exc}"
        raise InvalidInput(message, code="invalid_csv") from None
    return rows


def _csv_columns(header: list[str]) -> tuple[int, list[tuple[int, str]]]:
    """Where the device id is, and which tag each `tag:<key>` column is."""
    names = [name.strip() for name in header]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise InvalidInput(f"Column(s) named twice in the CSV header: {_listed(twice)}", code="invalid_csv")
    if CSV_DEVICE_ID not in names:
        raise InvalidInput(
            f"The CSV header has no {CSV_DEVICE_ID} column (it has {_listed(names)}); "
            f"the columns are {CSV_DEVICE_ID} and tag:<key> ones, e.g. {CSV_EXAMPLE}",
            code="invalid_csv",
        )
    unknown = [name for name in names if name != CSV_DEVICE_ID and not name.startswith(CSV_TAG_PREFIX)]
    if unknown:
        raise InvalidInput(
            f"Unknown column(s) in the CSV header: {_listed(unknown)}; the columns are "
            f"{CSV_DEVICE_ID} and tag:<key> ones (a tag named site: tag:site)",
            code="invalid_csv",
        )
    tags = [(index, name.removeprefix(CSV_TAG_PREFIX)) for index, name in enumerate(names) if name != CSV_DEVICE_ID]
    for _, key in tags:
        if not TAG_KEY.matches(key):
            raise InvalidInput(
                f"Column {_quoted(CSV_TAG_PREFIX + key)} names an invalid tag key: use {TAG_KEY.text}",
                code="invalid_csv",
            )
    return names.index(CSV_DEVICE_ID), tags


def _quoted(name: str) -> str:
    return repr(name[:70]) + ("..." if len(name) > 70 else "")


def _listed(names: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(_quoted(name) for name in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def tokens_csv(created: Iterable[tuple[str, str]]) -> str:
    """The tokens file handed back once: `device_id,provision_token`, a line per device created."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(TOKENS_HEADER)
    writer.writerows(created)
    return out.getvalue()


def tokens_filename(tenant_id: str, at) -> str:
    """`iotcloud-tokens-<tenant>-<UTC time>.csv` (tenant ids are [a-z0-9_-]: safe in a header)."""
    return f"iotcloud-tokens-{tenant_id}-{at:%Y%m%dT%H%M%SZ}.csv"
