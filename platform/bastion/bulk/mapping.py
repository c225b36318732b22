"""How a CSV file's columns become a record: the mapping file and type coercion.

A mapping (YAML or JSON, `--map mapping.yaml` or the `mapping` form field) says which
column holds which field, and how the file writes dates, booleans and decimals:

    columns:            # CSV header -> field, or custom.<key> for a custom field
      E-Mail: email
      Nachname: last_name
      Segment: custom.segment
    ignore: [Internal ID]          # columns deliberately left out
    defaults: {lead_source: web}   # values for fields no column sets
    dates: "%d.%m.%Y"              # default: ISO 8601, YYYY-MM-DD
    booleans: {true: [ja, x], false: [nein, ""]}
    decimal_separator: ","
    delimiter: ";"

Without a mapping, a column whose header is a field's name (or `custom.<key>`) maps to
it. Every column must map to something or be ignored: a column nobody mapped is an
error before anything is imported, not data silently dropped.

Coercion turns each cell (a string) into what the catalog's validator expects (an
integer, a boolean, an ISO date, ...); the validator (`crm.schemas`) then checks the
row exactly as it checks an API body. Error messages name the rule, never the value.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import yaml

from bastion.crm.catalog import SYSTEM_FIELDS, EntitySpec, FieldSpec
from bastion.errors import FieldError, ValidationFailed

MAX_COLUMNS = 200
MAX_MAPPING_BYTES = 65_536
_CUSTOM = "custom."
_INTEGER_RE = re.compile(r"[+-]?\d{1,18}")
_TRUE = ("true", "yes", "y", "1")
_FALSE = ("false", "no", "n", "0")
_MAPPING_KEYS = frozenset(
    {"columns", "ignore", "defaults", "dates", "booleans", "decimal_separator", "delimiter"}
)


@dataclass(frozen=True, slots=True)
class ImportMapping:
    """A parsed mapping file (before it meets a file's header)."""

    columns: Mapping[str, str] = field(default_factory=dict)
    ignore: frozenset[str] = frozenset()
    defaults: Mapping[str, Any] = field(default_factory=dict)
    dates: str | None = None
    true_values: frozenset[str] = frozenset(_TRUE)
    false_values: frozenset[str] = frozenset(_FALSE)
    decimal_separator: str = "."
    delimiter: str = ","


def parse_mapping(text: str | None) -> ImportMapping:
    """The mapping in `text` (YAML, of which JSON is a subset); None: the default."""
    if text is None or not text.strip():
        return ImportMapping()
    if len(text.encode("utf-8")) > MAX_MAPPING_BYTES:
        raise _invalid("mapping", f"must be at most {MAX_MAPPING_BYTES} bytes")
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError:
        raise _invalid("mapping", "is not valid YAML or JSON") from None
    if not isinstance(raw, dict):
        raise _invalid("mapping", "must be an object (columns, ignore, defaults, ...)")
    unknown = sorted(str(key) for key in raw if key not in _MAPPING_KEYS)
    if unknown:
        raise _invalid("mapping", f"unknown keys: {', '.join(unknown)}")
    columns = raw.get("columns") or {}
    if not isinstance(columns, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in columns.items()
    ):
        raise _invalid("mapping.columns", "must map column headers to field names")
    ignore = raw.get("ignore") or []
    if not isinstance(ignore, list) or not all(isinstance(c, str) for c in ignore):
        raise _invalid("mapping.ignore", "must be a list of column headers")
    defaults = raw.get("defaults") or {}
    if not isinstance(defaults, dict) or not all(isinstance(k, str) for k in defaults):
        raise _invalid("mapping.defaults", "must map field names to values")
    dates = raw.get("dates")
    if dates is not None and (not isinstance(dates, str) or "%" not in dates):
        raise _invalid("mapping.dates", "must be a strptime format such as %d.%m.%Y")
    true_values, false_values = _booleans(raw.get("booleans"))
    separator = raw.get("decimal_separator", ".")
    if separator not in (".", ","):
        raise _invalid("mapping.decimal_separator", "must be . or ,")
    delimiter = raw.get("delimiter", ",")
    if delimiter not in (",", ";", "\t", "|"):
        raise _invalid("mapping.delimiter", "must be one of , ; | or a tab")
    return ImportMapping(
        columns=dict(columns),
        ignore=frozenset(ignore),
        defaults=dict(defaults),
        dates=dates,
        true_values=true_values,
        false_values=false_values,
        decimal_separator=separator,
        delimiter=delimiter,
    )


def _booleans(raw: object) -> tuple[frozenset[str], frozenset[str]]:
    if raw is None:
        return frozenset(_TRUE), frozenset(_FALSE)
    # YAML reads the keys `true`/`false` as booleans; accept them as strings too.
    if not isinstance(raw, dict) or set(map(str, raw)) - {"True", "False", "true", "false"}:
        raise _invalid("mapping.booleans", "must be {true: [...], false: [...]}")
    lists = {str(key).lower(): value for key, value in raw.items()}
    found: list[frozenset[str]] = []
    for key in ("true", "false"):
        values = lists.get(key, list(_TRUE if key == "true" else _FALSE))
        if not isinstance(values, list) or not all(isinstance(v, str | int) for v in values):
            raise _invalid(f"mapping.booleans.{key}", "must be a list of strings")
        found.append(frozenset(str(v).strip().casefold() for v in values))
    if found[0] & found[1]:
        raise _invalid("mapping.booleans", "a value cannot mean both true and false")
    return found[0], found[1]


@dataclass(frozen=True, slots=True)
class ColumnPlan:
    """A mapping applied to one file's header: which cell goes to which field."""

    spec: EntitySpec
    mapping: ImportMapping
    targets: tuple[str | None, ...]  # per column: a field, custom.<key>, or None (ignored)
    defaults: Mapping[str, Any]

    @property
    def fields(self) -> list[str]:
        """The catalog fields this import writes (for the policy's write check)."""
        named = {t.split(".", 1)[0] if t.startswith(_CUSTOM) else t for t in self.targets if t}
        return sorted(named | set(self.defaults))

    def digest(self, region: str) -> str:
        """What makes two runs the same import, besides the file's bytes."""
        canonical = {
            "entity": self.spec.name,
            "region": region,
            "targets": list(self.targets),
            "defaults": {k: _jsonable(v) for k, v in sorted(self.defaults.items())},
            "dates": self.mapping.dates,
            "true": sorted(self.mapping.true_values),
            "false": sorted(self.mapping.false_values),
            "decimal_separator": self.mapping.decimal_separator,
            "delimiter": self.mapping.delimiter,
        }
        text = json.dumps(canonical, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def body(self, cells: Sequence[str]) -> tuple[dict[str, Any], list[FieldError]]:
        """One row as a record body, and the cells that could not be read as their type."""
        body: dict[str, Any] = {}
        custom: dict[str, Any] = {}
        errors: list[FieldError] = []
        for target, raw in zip(self.targets, cells, strict=False):
            if target is None:
                continue
            text = raw.strip()
            if not text:
                continue
            if target.startswith(_CUSTOM):
                custom[target[len(_CUSTOM) :]] = text
                continue
            spec = self.spec.field(target)
            assert spec is not None  # the plan only holds catalog fields
            try:
                body[target] = self._coerce(spec, text)
            except _CellError as exc:
                errors.append(FieldError(target, str(exc)))
        for name, value in self.defaults.items():
            if name == "custom" and isinstance(value, dict):
                custom = {**value, **custom}
            elif body.get(name) is None:
                body[name] = value
        if custom:
            body["custom"] = custom
        return body, errors

    def _coerce(self, spec: FieldSpec, text: str) -> Any:
        match spec.type:
            case "integer":
                if _INTEGER_RE.fullmatch(text) is None:
                    raise _CellError("must be a whole number")
                return int(text)
            case "decimal":
                if self.mapping.decimal_separator == ",":
                    return text.replace(".", "").replace(",", ".")
                return text.replace(",", "")
            case "boolean":
                folded = text.casefold()
                if folded in self.mapping.true_values:
                    return True
                if folded in self.mapping.false_values:
                    return False
                raise _CellError("must be one of the mapping's true or false values")
            case "date" if self.mapping.dates is not None:
                try:
                    return datetime.strptime(text, self.mapping.dates).date().isoformat()
                except ValueError:
                    raise _CellError(f"must be a date as {self.mapping.dates}") from None
            case _:
                return text


class _CellError(ValueError):
    """A cell that is not a value of its column's type (the message names the rule)."""


def plan_columns(spec: EntitySpec, header: Sequence[str], mapping: ImportMapping) -> ColumnPlan:
    """Match a file's header with the mapping: every problem at once, before any row."""
    errors: list[FieldError] = []
    if not header or all(not h.strip() for h in header):
        raise _invalid("file", "the first line must be a header naming the columns")
    if len(header) > MAX_COLUMNS:
        raise _invalid("file", f"has more than {MAX_COLUMNS} columns")
    names = [h.strip() for h in header]
    seen: set[str] = set()
    for name in names:
        if name in seen:
            errors.append(FieldError(f"column {name!r}", "appears twice in the header"))
        seen.add(name)
    for name in mapping.columns:
        if name not in seen:
            errors.append(FieldError(f"mapping.columns.{name}", "is not a column of the file"))
    targets: list[str | None] = []
    claimed: dict[str, str] = {}
    for name in names:
        if name in mapping.ignore:
            targets.append(None)
            continue
        target = mapping.columns.get(name, name)
        problem = _target_problem(spec, target)
        if problem is not None:
            where = f"mapping.columns.{name}" if name in mapping.columns else f"column {name!r}"
            hint = "" if name in mapping.columns else "; map it to a field or ignore it"
            errors.append(FieldError(where, problem + hint))
            targets.append(None)
            continue
        if target in claimed:
            errors.append(
                FieldError(f"column {name!r}", f"maps to {target}, as column {claimed[target]!r}")
            )
        claimed[target] = name
        targets.append(target)
    for key in mapping.defaults:
        problem = _target_problem(spec, key)
        if problem is not None or key.startswith(_CUSTOM):
            errors.append(FieldError(f"mapping.defaults.{key}", problem or "is not a field"))
    provided = {t for t in targets if t} | set(mapping.defaults)
    for required in (f for f in spec.fields if f.required and not f.read_only):
        if required.name not in provided:
            errors.append(FieldError(required.name, "is required: map a column or a default"))
    if errors:
        raise ValidationFailed("the mapping does not fit the file's columns", errors)
    return ColumnPlan(spec, mapping, tuple(targets), dict(mapping.defaults))


def _target_problem(spec: EntitySpec, target: str) -> str | None:
    if target.startswith(_CUSTOM):
        return None if len(target) > len(_CUSTOM) else "names no custom field"
    if target in SYSTEM_FIELDS or target == "region":
        return f"{target} is set by Bastion, not imported"
    field = spec.field(target)
    if field is None or field.type == "json":
        return f"is not a field of {spec.singular}"
    if field.read_only:
        return f"{target} is read-only"
    return None


def _jsonable(value: Any) -> Any:
    return value if isinstance(value, str | int | float | bool | None) else str(value)


def _invalid(field: str, message: str) -> ValidationFailed:
    return ValidationFailed("the import cannot start", [FieldError(field, message)])
