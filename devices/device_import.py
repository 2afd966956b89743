"""Import devices from a CSV file: check every row first, then create all of them or none.

The file is UTF-8 (a byte-order mark is fine) with a header row naming its columns:

    key, name, device_type          required
    groups, tags                    several values separated by ';'
    firmware_version, location      text
    latitude, longitude             decimal degrees
    attributes                      a JSON object

Device types and groups are looked up by name within the importing tenant only, so another
tenant's names count as unknown. Every problem is reported with its line in the file (the header
is line 1) and a hint how to fix it.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.core.files.uploadedfile import UploadedFile
from django.template.defaultfilters import filesizeformat

from .forms import StrictJSONDecoder, contains_nul
from .models import Device, DeviceGroup, DeviceType, Tenant
from .services import DeviceRefused, DeviceSpec, NewCredential, create_devices

COLUMNS = (
    "key",
    "name",
    "device_type",
    "groups",
    "tags",
    "firmware_version",
    "location",
    "latitude",
    "longitude",
    "attributes",
)
REQUIRED_COLUMNS = ("key", "name", "device_type")
LIST_SEPARATOR = ";"
HEADER_EXAMPLE = ",".join(COLUMNS)

Problem = tuple[int | None, str]


@dataclass
class ImportResult:
    """What an import did: `errors` as (line, message), line None for the file as a whole; and
    the devices created with their secrets, which exist only here (empty if there are errors)."""

    errors: list[Problem] = field(default_factory=list)
    created: list[NewCredential] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def error_messages(self) -> list[str]:
        return [f"line {line}: {message}" if line else message for line, message in self.errors]


@dataclass
class _Row:
    line: int
    fields: dict[str, Any]
    groups: list[DeviceGroup]


class _RowRefused(Exception):
    def __init__(self, line: int | None, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


def import_devices(tenant: Tenant, uploaded_file: UploadedFile) -> ImportResult:
    """Check the whole file; if every row is good, create every device in one transaction."""
    text, problem = _read_text(uploaded_file)
    if problem is not None:
        return ImportResult(errors=[problem])
    rows, errors = _parse_rows(tenant, text)
    if errors:
        return ImportResult(errors=sorted(errors, key=lambda p: p[0] or 0))
    try:
        created = _create_all(tenant, rows)
    except _RowRefused as refused:
        return ImportResult(errors=[(refused.line, refused.message)])
    return ImportResult(created=created)


def _read_text(uploaded_file: UploadedFile) -> tuple[str, Problem | None]:
    max_bytes = settings.DEVICE_IMPORT_MAX_BYTES
    if uploaded_file.size is not None and uploaded_file.size > max_bytes:
        return "", (None, _too_big(max_bytes))
    uploaded_file.seek(0)
    data = uploaded_file.read(max_bytes + 1)
    if len(data) > max_bytes:
        return "", (None, _too_big(max_bytes))
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        byte = data[error.start : error.start + 1].hex()
        return "", (
            line,
            f"is not UTF-8 text (byte 0x{byte}): save the file as “CSV UTF-8” and import it again.",
        )
    if not text.strip():
        return "", (None, f"The file is empty: start it with the header line {HEADER_EXAMPLE}.")
    return text, None


def _too_big(max_bytes: int) -> str:
    return (
        f"The file is larger than {filesizeformat(max_bytes)}: split it into smaller files "
        "and import them one after another."
    )


def _parse_rows(tenant: Tenant, text: str) -> tuple[list[_Row], list[Problem]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    header, problems = _read_header(next(reader, []))
    if problems:
        return [], problems
    lookups = _TenantNames(tenant)
    max_rows = settings.DEVICE_IMPORT_MAX_ROWS
    rows: list[_Row] = []
    keys: list[tuple[int, str]] = []
    count = 0
    while True:
        line = reader.line_num + 1
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as error:
            problems.append(
                (
                    line,
                    f"cannot be read as CSV ({error}): check the quotes on this line; the "
                    "lines after it were not checked.",
                )
            )
            break
        if not any(cell.strip() for cell in record):
            continue
        count += 1
        if count > max_rows:
            return [], [
                (
                    None,
                    f"The file has more than {max_rows} devices: split it into files of at "
                    f"most {max_rows} rows and import them one after another.",
                )
            ]
        if len(record) != len(header):
            problems.append(
                (
                    line,
                    f"has {len(record)} values but the header has {len(header)} columns: put "
                    "values that contain a comma in double quotes.",
                )
            )
            continue
        values = dict(zip(header, (cell.strip() for cell in record), strict=True))
        if values.get("key"):
            keys.append((line, values["key"]))
        row, row_problems = _check_row(line, values, tenant, lookups)
        problems.extend((line, message) for message in row_problems)
        if row is not None:
            rows.append(row)
    if count == 0:
        return [], [(None, "The file has a header but no devices: add one device per line.")]
    problems.extend(_duplicate_keys(keys))
    return rows, problems


def _read_header(record: list[str]) -> tuple[list[str], list[Problem]]:
    header = [cell.strip().lower() for cell in record]
    known = set(COLUMNS)
    if not any(name in known for name in header):
        return header, [
            (
                1,
                f"is not a header: the first line names the columns, e.g. {HEADER_EXAMPLE} "
                "(key, name and device_type are required).",
            )
        ]
    problems: list[Problem] = []
    unknown = [name or "(empty)" for name in header if name not in known]
    if unknown:
        problems.append(
            (
                1,
                f"unknown column(s) {', '.join(unknown)}: use only {', '.join(COLUMNS)}.",
            )
        )
    repeated = sorted({name for name in header if name and header.count(name) > 1})
    if repeated:
        problems.append((1, f"column(s) {', '.join(repeated)} appear more than once: keep one."))
    missing = [name for name in REQUIRED_COLUMNS if name not in header]
    if missing:
        problems.append(
            (
                1,
                f"the header lacks the column(s) {', '.join(missing)}: key, name and "
                "device_type are required.",
            )
        )
    return header, problems


class _TenantNames:
    """The tenant's device types and groups by name, fetched once per import."""

    def __init__(self, tenant: Tenant) -> None:
        self.tenant = tenant
        self.types = {t.name: t for t in DeviceType.objects.filter(tenant=tenant)}
        self.groups = {g.name: g for g in DeviceGroup.objects.filter(tenant=tenant)}

    def type_hint(self) -> str:
        if not self.types:
            return f"{self.tenant} has no device types yet: create one first"
        names = sorted(self.types)
        shown = ", ".join(names[:10]) + (", …" if len(names) > 10 else "")
        return f"use one of {shown} (names are case-sensitive), or create the type first"


def _check_row(
    line: int, values: dict[str, str], tenant: Tenant, lookups: _TenantNames
) -> tuple[_Row | None, list[str]]:
    problems: list[str] = []
    failed: set[str] = set()
    fields: dict[str, Any] = {}

    for column, hint in (
        ("key", "give every device a unique key, e.g. freezer-0042"),
        ("name", "give the device a name people recognise, e.g. Freezer 42"),
        ("device_type", lookups.type_hint()),
    ):
        if not values.get(column, ""):
            problems.append(f"{column} is empty: {hint}.")
            failed.add(column)
    fields["key"] = values.get("key", "")
    fields["name"] = values.get("name", "")

    type_name = values.get("device_type", "")
    device_type = lookups.types.get(type_name)
    if type_name and device_type is None:
        problems.append(f"unknown device type “{type_name}” in {tenant}: {lookups.type_hint()}.")
        failed.add("device_type")
    fields["device_type"] = device_type

    group_names = _split_list(values.get("groups", ""))
    unknown = [name for name in group_names if name not in lookups.groups]
    if unknown:
        problems.append(
            f"unknown group(s) {', '.join(f'“{n}”' for n in unknown)} in {tenant}: create "
            f"them first or correct the names (separate several groups with '{LIST_SEPARATOR}')."
        )
    groups = [lookups.groups[name] for name in group_names if name in lookups.groups]

    fields["tags"] = _split_list(values.get("tags", ""))
    fields["firmware_version"] = values.get("firmware_version", "")
    fields["location"] = values.get("location", "")

    for column, example in (("latitude", "52.3702"), ("longitude", "4.8952")):
        try:
            fields[column] = _number(values.get(column, ""))
        except ValueError:
            problems.append(
                f"{column} “{values[column]}” is not a number: write decimal degrees with a "
                f"dot, e.g. {example}, or leave it empty."
            )
            failed.add(column)
            fields[column] = None

    try:
        fields["attributes"] = _attributes(values.get("attributes", ""))
    except ValueError as error:
        problems.append(str(error))
        failed.add("attributes")
        fields["attributes"] = {}

    device = Device(tenant=tenant, credential_hash="-", **fields)
    try:
        device.full_clean(
            exclude=[*failed, "tenant", "device_type", "credential_hash"],
            validate_unique=False,
            validate_constraints=False,
        )
    except ValidationError as error:
        problems.extend(_describe(error))
    if problems:
        return None, problems
    return _Row(line=line, fields=fields, groups=groups), []


def _split_list(text: str) -> list[str]:
    items = (item.strip() for item in text.split(LIST_SEPARATOR))
    return list(dict.fromkeys(item for item in items if item))


def _number(text: str) -> float | None:
    if not text:
        return None
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


def _attributes(text: str) -> dict:
    if not text:
        return {}
    how = (
        'write a JSON object such as {"site": "north"}; inside a quoted CSV cell each " is '
        'written twice: "{""site"": ""north""}"'
    )
    try:
        value = json.loads(text, cls=StrictJSONDecoder)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"attributes is not valid JSON ({error.msg} at character {error.pos + 1}): {how}."
        ) from error
    if not isinstance(value, dict):
        raise ValueError(f"attributes must be a JSON object, not {type(value).__name__}: {how}.")
    if contains_nul(value):
        raise ValueError("attributes contain NUL characters (\\u0000): remove them.")
    return value


def _describe(error: ValidationError) -> list[str]:
    if not hasattr(error, "error_dict"):
        return list(error.messages)
    return [
        message if name == NON_FIELD_ERRORS else f"{name}: {message}"
        for name, messages in error.message_dict.items()
        for message in messages
    ]


def _duplicate_keys(keys: list[tuple[int, str]]) -> list[Problem]:
    """Keys repeated within the file (reported on each later line) or already in use."""
    problems: list[Problem] = []
    first_line: dict[str, int] = {}
    for line, key in keys:
        if key in first_line:
            problems.append(
                (
                    line,
                    f"key “{key}” is also on line {first_line[key]}: every device needs its "
                    "own key.",
                )
            )
        else:
            first_line[key] = line
    taken = Device.objects.filter(key__in=list(first_line)).values_list("key", flat=True)
    problems.extend(
        (
            first_line[key],
            f"a device with key “{key}” already exists: choose another key (keys are unique "
            "across the whole platform).",
        )
        for key in taken
    )
    return problems


def _create_all(tenant: Tenant, rows: list[_Row]) -> list[NewCredential]:
    specs = []
    for row in rows:
        fields = dict(row.fields)
        key, name, device_type = fields.pop("key"), fields.pop("name"), fields.pop("device_type")
        specs.append(DeviceSpec(key, name, device_type, tuple(row.groups), fields))
    try:
        return create_devices(tenant, specs)
    except DeviceRefused as error:
        raise _RowRefused(rows[error.index].line, "; ".join(_describe(error))) from error
    except ValidationError as error:
        # Another import or user took one of the keys between the check and the insert.
        raise _RowRefused(
            None, "; ".join(_describe(error)) + " Nothing was imported; try again."
        ) from error
