"""Schema spec (TOML) -> validated ``Schema``: fields, types, cleaning, filters, Arrow schema.

A bad spec raises ``ConfigError`` naming the file, the key and what is wrong.
See README.md "Schema reference" for the format.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from etl import coerce
from etl.errors import ConfigError

if TYPE_CHECKING:
    import pyarrow as pa

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

TYPES = ("string", "int64", "int32", "float64", "bool", "timestamp", "date", "list<string>",
         "json")
_arrow_types: dict = {}


def arrow_types() -> dict:
    """Schema type -> pyarrow type. pyarrow is imported on first use: ``etl load`` and
    ``etl status`` into DuckDB never need it (0.15 s of start-up, measured)."""
    if not _arrow_types:
        import pyarrow as pa

        _arrow_types.update({
            "string": pa.string(), "int64": pa.int64(), "int32": pa.int32(),
            "float64": pa.float64(), "bool": pa.bool_(), "timestamp": pa.timestamp("us", tz="UTC"),
            "date": pa.date32(), "list<string>": pa.list_(pa.string()), "json": pa.string()})
    return _arrow_types


FILTER_OPS = ("eq", "ne", "in", "not_in", "ge", "gt", "le", "lt", "between", "not_null", "regex")
FIELD_KEYS = {"type", "path", "required", "null_if", "strip", "lower", "html_unescape", "unit",
              "description"}
DATASET_KEYS = {"name", "key", "version", "partition_by", "description"}
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class Field:
    """One output column and how to fill it from a JSON object."""

    name: str
    type: str
    path: tuple[str, ...]
    required: bool = False
    null_if: frozenset = frozenset()
    strip: bool = False
    lower: bool = False
    html_unescape: bool = False
    unit: str = "s"

    @property
    def arrow_type(self) -> pa.DataType:
        return arrow_types()[self.type]


@dataclass(frozen=True)
class Filter:
    """One condition on a field's coerced value; a row is kept when all hold."""

    field: str
    op: str
    value: object


@dataclass(frozen=True)
class Schema:
    """A dataset: table name, key, version, partitioning, fields and filters."""

    name: str
    key: str | None
    version: str | None
    partition_by: str | None
    fields: tuple[Field, ...]
    filters: tuple[Filter, ...]
    source: str = "<inline>"

    @property
    def partition_column(self) -> str | None:
        """Hive partition directory key: ``<partition_by>_date``."""
        return f"{self.partition_by}_date" if self.partition_by else None

    def field(self, name: str) -> Field:
        return next(f for f in self.fields if f.name == name)

    def arrow_schema(self) -> pa.Schema:
        import pyarrow as pa

        return pa.schema([pa.field(f.name, f.arrow_type, nullable=not f.required)
                          for f in self.fields])


def load_schema(path: str | Path) -> Schema:
    """Read and validate a schema TOML file. Raises ConfigError."""
    path = str(path)
    try:
        with open(path, "rb") as fh:
            doc = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError("schema file not found", path) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", path) from None
    return schema_from_dict(doc, path)


def schema_from_dict(doc: dict, source: str = "<inline>") -> Schema:
    """Validate a parsed schema document (the TOML's tables as dicts)."""
    def bad(key: str, what: str) -> ConfigError:
        return ConfigError(f"[{key}] {what}", source, field=key)

    unknown = set(doc) - {"dataset", "fields", "filter"}
    if unknown:
        raise bad(sorted(unknown)[0], "unknown table; expected [dataset], [fields.*], [filter]")
    for table in ("dataset", "fields", "filter"):
        if not isinstance(doc.get(table, {}), dict):
            raise bad(table, "must be a table")
    ds = doc.get("dataset", {})
    for k in set(ds) - DATASET_KEYS:
        raise bad(f"dataset.{k}", f"unknown key; expected one of {sorted(DATASET_KEYS)}")
    if not isinstance(ds.get("name"), str) or not IDENTIFIER.fullmatch(ds["name"]):
        raise bad("dataset.name", "is required: a table name of letters, digits and _")
    if not doc.get("fields"):
        raise bad("fields", "at least one [fields.<name>] table is required")
    fields = tuple(_field(n, spec, bad) for n, spec in doc["fields"].items())
    names = {f.name: f for f in fields}
    for k in ("key", "version", "partition_by"):
        if ds.get(k) is not None and (not isinstance(ds[k], str) or ds[k] not in names):
            raise bad(f"dataset.{k}", f"names {ds[k]!r}, which is not a field")
    if ds.get("partition_by") and names[ds["partition_by"]].type not in ("timestamp", "date"):
        raise bad("dataset.partition_by", "must name a timestamp or date field")
    filters = tuple(f for name, spec in doc.get("filter", {}).items()
                    for f in _filters(name, spec, names, bad))
    return Schema(ds["name"], ds.get("key"), ds.get("version"), ds.get("partition_by"),
                  fields, filters, source)


def _field(name: str, spec, bad) -> Field:
    key = f"fields.{name}"
    if not IDENTIFIER.fullmatch(name):
        raise bad(key, "field names are letters, digits and _ (use path = for other JSON keys)")
    if not isinstance(spec, dict):
        raise bad(key, "must be a table")
    for k in set(spec) - FIELD_KEYS:
        raise bad(f"{key}.{k}", f"unknown key; expected one of {sorted(FIELD_KEYS)}")
    if not isinstance(spec.get("type"), str) or spec["type"] not in TYPES:
        raise bad(f"{key}.type", f"is {spec.get('type')!r}; expected one of {list(TYPES)}")
    path = spec.get("path", name)
    if not isinstance(path, str) or not all(path.split(".")):
        raise bad(f"{key}.path", "must be a dotted path like 'gildings.gid_2'")
    null_if = spec.get("null_if", [])
    if not isinstance(null_if, list) or not all(isinstance(x, str) for x in null_if):
        raise bad(f"{key}.null_if", "must be a list of strings")
    for flag in ("required", "strip", "lower", "html_unescape"):
        if not isinstance(spec.get(flag, False), bool):
            raise bad(f"{key}.{flag}", "must be true or false")
    cleaning = null_if or any(spec.get(k) for k in ("strip", "lower", "html_unescape"))
    if cleaning and spec["type"] != "string":
        raise bad(key, "null_if, strip, lower and html_unescape apply to string fields only")
    if not isinstance(spec.get("unit", "s"), str) or spec.get("unit", "s") not in coerce.UNIT_US:
        raise bad(f"{key}.unit", f"must be one of {list(coerce.UNIT_US)}")
    return Field(name, spec["type"], tuple(path.split(".")), spec.get("required", False),
                 frozenset(null_if), spec.get("strip", False), spec.get("lower", False),
                 spec.get("html_unescape", False), spec.get("unit", "s"))


def _filters(name: str, spec, fields: dict, bad) -> list[Filter]:
    key = f"filter.{name}"
    if name not in fields:
        raise bad(key, f"{name!r} is not a field; filters apply to declared fields")
    if not isinstance(spec, dict) or not spec:
        raise bad(key, "must be an inline table like { in = [...] } or { ge = 10 }")
    out = []
    for op, value in spec.items():
        if op not in FILTER_OPS:
            raise bad(f"{key}.{op}", f"unknown operator; expected one of {list(FILTER_OPS)}")
        out.append(Filter(name, op, _filter_value(fields[name], op, value, f"{key}.{op}", bad)))
    return out


def _filter_value(field: Field, op: str, value, key: str, bad):
    if op == "not_null":
        if value is not True:
            raise bad(key, "must be true")
        return True
    if op == "regex":
        try:
            return re.compile(value)
        except (re.error, TypeError) as exc:
            raise bad(key, f"is not a valid regular expression: {exc}") from None
    if field.type == "list<string>":
        raise bad(key, "list<string> fields take only not_null and regex filters")
    many = op in ("in", "not_in", "between")
    if many and not isinstance(value, list):
        raise bad(key, "must be a list")
    if op == "between" and len(value) != 2:
        raise bad(key, "must be a list of two bounds [low, high]")
    conv = _coercer_for_bounds(field)
    try:
        bounds = [conv(v) for v in value] if many else conv(value)
    except coerce.BadValue as exc:
        raise bad(key, f"value does not fit the field's type {field.type}: {exc}") from None
    if None in (bounds if many else [bounds]):  # false is a null timestamp; use not_null
        raise bad(key, "a bound cannot be null (false); use not_null = true")
    return bounds


def _coercer_for_bounds(field: Field):
    """Bounds take the field's own type, so a row's value never meets an incomparable one."""
    if field.type in ("string", "json"):
        return coerce.to_string
    if field.type == "bool":
        return coerce.to_bool
    if field.type == "timestamp":
        return coerce.parse_instant
    if field.type == "date":
        return coerce.to_date
    if field.type in ("int64", "int32", "float64"):
        return coerce.to_float64 if field.type == "float64" else coerce.to_int64
    raise AssertionError(f"no bound coercer for {field.type}")
