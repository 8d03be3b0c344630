"""``etl infer``: read a sample of shards and write a schema TOML that ``etl ingest`` takes as is.

Nested objects become dotted paths (``gildings.gid_2`` -> field ``gildings_gid_2``);
objects with many distinct keys (ids as keys) and arrays of objects are kept as
``json``. Per field it notes how often it was seen and, where values change type
across rows (``created_utc`` an int here and a string there), which type it chose
and how the others are coerced. Only the key is marked required: a field present
in every sampled row may still be missing elsewhere in a dump.
"""

from __future__ import annotations

import os
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import orjson

from etl.shards import find_shards, iter_chunks, iter_line_batches, open_shard

MAX_KEYS = 64            # an object with more distinct keys than this is kept as json
MAX_DEPTH = 3            # objects nested deeper than this are kept as json
EPOCH_MIN, EPOCH_MAX = 315_532_800, 4_102_444_800  # 1980..2100 in seconds: "looks like a time"
TIME_NAME = re.compile(r"(^|_)(utc|at|on|time|timestamp|date|ts|created|edited|updated)$")
KEY_NAMES = ("id", "_id", "uuid", "key", "name")
VERSION_NAMES = ("retrieved_on", "retrieved_utc", "updated_at", "updated_utc", "version")
NUMERIC = {"int", "intfloat", "float", "intstr", "floatstr"}
RARE = 0.01              # kinds held by fewer rows than this share do not decide a type
MAX_DISTINCT = 100_000   # values remembered per field, to find a unique key
ISO_TIME = re.compile(r"\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?(Z|[+-]\d{2}:?\d{2})?")


@dataclass
class FieldStats:
    """What one path held across the sampled rows."""

    kinds: Counter = field(default_factory=Counter)   # int, float, bool, str, numstr, isostr...
    present: int = 0
    distinct: set = field(default_factory=set)
    epochish: int = 0


def _kind(v) -> str:
    t = type(v)
    if v is None:
        return "null"
    if t is bool:
        return "true" if v else "false"
    if t is int:
        return "int"
    if t is float:
        return "intfloat" if v.is_integer() else "float"
    if t is str:
        s = v.strip()
        if re.fullmatch(r"[+-]?\d+", s):
            return "intstr"
        if re.fullmatch(r"[+-]?\d+\.\d*", s):
            return "floatstr"
        return "isostr" if ISO_TIME.fullmatch(s) else "str"
    if t is list:
        return "list" if all(not isinstance(x, (dict, list)) for x in v) else "nested_list"
    return "object"


def _walk(obj: dict, prefix: tuple, stats: dict, wide: set, depth: int = 1) -> None:
    for k, v in obj.items():
        path = (*prefix, k)
        if isinstance(v, dict) and depth < MAX_DEPTH and path not in wide and "." not in k:
            stats[path].present += 1
            stats[path].kinds["object"] += 1
            stats[path].distinct.update(list(v)[:MAX_KEYS + 1])
            if len(stats[path].distinct) > MAX_KEYS:
                wide.add(path)
            _walk(v, path, stats, wide, depth + 1)
            continue
        s = stats[path]
        s.present += 1
        kind = _kind(v)
        s.kinds[kind] += 1
        if kind in NUMERIC and EPOCH_MIN <= float(v) <= EPOCH_MAX:
            s.epochish += 1
        if len(s.distinct) <= MAX_DISTINCT and kind in ("str", "intstr", "int"):
            s.distinct.add(v)


def sample_rows(inputs: list[str], lines: int) -> tuple[list[dict], int]:
    """Up to ``lines`` JSON objects from the shards (in order) and how many lines were bad."""
    rows, bad = [], 0
    for shard in find_shards(inputs):
        with open_shard(shard) as fh:
            for batch in iter_line_batches(iter_chunks(fh, shard.path, fill=True), 1 << 20):
                for line in batch.lines:
                    if not line.strip():
                        continue
                    try:
                        obj = orjson.loads(line)
                    except orjson.JSONDecodeError:
                        bad += 1
                        continue
                    if isinstance(obj, dict):
                        rows.append(obj)
                    else:
                        bad += 1
                    if len(rows) >= lines:
                        return rows, bad
    return rows, bad


def choose_type(name: str, s: FieldStats) -> tuple[str, list[str]]:
    """The schema type for a field and notes on the coercion chosen."""
    kinds = Counter()
    for k, n in s.kinds.items():
        if k != "null":
            kinds["bool" if k in ("true", "false") else k] += n
    label = {"int": "an integer", "intfloat": "a whole float", "float": "a float",
             "intstr": "a string of digits", "floatstr": "a numeric string",
             "isostr": "an ISO date/time", "str": "text", "bool": "a boolean",
             "list": "an array", "nested_list": "an array of objects", "object": "an object"}
    mixed = [f"{label[k]} in {n}" for k, n in kinds.most_common()]
    note = [f"changes type: {', '.join(mixed)} rows"] if len(kinds) > 1 else []
    total = sum(kinds.values())
    rare = {k for k, n in kinds.items() if total >= 100 and n < RARE * total}
    if rare and rare != set(kinds):  # a few odd values must not decide the type
        note.append(f"{sum(kinds[k] for k in rare)} rows with {', '.join(label[k] for k in rare)}"
                    " are ignored here; they would be rejected as type:" + name)
        kinds = Counter({k: n for k, n in kinds.items() if k not in rare})
    keys = set(kinds)
    if not keys:
        return "string", ["always null in the sample"]
    if keys & {"object", "nested_list"} or ("list" in keys and keys != {"list"}):
        return "json", note + (["kept as JSON text"] if note else [])
    if keys == {"list"}:
        return "list<string>", note
    if keys == {"bool"}:
        return "bool", note
    numeric = sum(kinds[k] for k in keys & NUMERIC)
    timeish = TIME_NAME.search(name) and s.epochish >= 0.9 * max(numeric, 1)
    if keys <= NUMERIC | {"bool", "isostr"} and (timeish or keys <= {"isostr"}) \
            and not s.kinds.get("true"):
        if "bool" in keys:
            note.append("false is read as null")
        return "timestamp", note + (["all read as epoch seconds"] if len(kinds) > 1 else [])
    if keys <= {"int", "intfloat", "intstr"}:
        return "int64", note + (["whole floats and digit strings are read as integers"]
                                if len(kinds) > 1 else [])
    if keys <= NUMERIC:
        return "float64", note + (["numeric strings are read as numbers"] if len(kinds) > 1
                                  else [])
    return "string", note + (["numbers and booleans are stored as their text"] if note else [])


def _names(paths: list[tuple]) -> dict[tuple, str]:
    names, used = {}, set()
    for p in paths:
        base = re.sub(r"\W", "_", "_".join(p)) or "field"
        base = base if re.match(r"[A-Za-z_]", base) else f"f_{base}"
        name, i = base, 2
        while name in used:
            name, i = f"{base}_{i}", i + 1
        used.add(name)
        names[p] = name
    return names


def infer_schema(inputs: list[str], lines: int = 10_000) -> str:
    """Schema TOML text for a sample of ``lines`` objects from ``inputs``."""
    rows, bad = sample_rows(inputs, lines)
    stats: dict[tuple, FieldStats] = defaultdict(FieldStats)
    wide: set = set()
    for row in rows:
        _walk(row, (), stats, wide)
    fields = {p: s for p, s in stats.items()
              if p in wide or set(s.kinds) - {"null"} != {"object"}}
    fields = {p: s for p, s in fields.items() if not any(p[:i] in wide for i in range(1, len(p)))}
    names = _names(list(fields))
    typed = {p: choose_type(names[p], s) for p, s in fields.items()}
    for p in wide:
        typed[p] = ("json", [f"an object with more than {MAX_KEYS} distinct keys: kept as JSON"])
    key = next((p for p in fields if len(p) == 1 and p[0] in KEY_NAMES
                and fields[p].present >= (1 - RARE) * len(rows)
                and len(fields[p].distinct) == fields[p].present), None)
    return _toml(inputs, rows, bad, fields, names, typed, key)


def _pick(typed: dict, names: dict, wanted: tuple, types: tuple) -> str | None:
    for want in wanted:
        for p, (t, _) in typed.items():
            if names[p] == want and t in types:
                return names[p]
    return None


def _toml(inputs, rows, bad, fields, names, typed, key) -> str:
    n = max(len(rows), 1)
    stem = os.path.basename(inputs[0].rstrip("/")).split(".")[0] or "dataset"
    dataset = re.sub(r"\W", "_", stem).lower()
    dataset = dataset if re.match(r"[a-z_]", dataset) else f"t_{dataset}"
    stamps = [names[p] for p, (t, _) in typed.items() if t == "timestamp"]
    partition = next((x for x in ("created_utc", "created_at", *stamps) if x in stamps), None)
    version = _pick(typed, names, VERSION_NAMES, ("timestamp", "int64", "float64"))
    out = [f"# Inferred by `etl infer` from {len(rows):,} rows of {', '.join(inputs)}"
           + (f" ({bad:,} bad lines skipped)" if bad else "") + ".",
           "# Review the types, drop fields you do not need, add [filter] rules.", "",
           "[dataset]", f"name = {_s(dataset)}"]
    out += [f"key = {_s(names[key])}"] if key else ["# key = \"...\"   # no unique field found"]
    out += [f"version = {_s(version)}"] if version else []
    out += [f"partition_by = {_s(partition)}"] if partition else []
    for p, s in fields.items():
        kind, notes = typed[p]
        out += ["", f"[fields.{names[p]}]"]
        if names[p] != ".".join(p) or len(p) > 1:
            out.append(f"path = {_s('.'.join(p))}")
        out.append(f"type = {_s(kind)}")
        if p == key:
            out.append("required = true")
        share = s.present / n
        seen = "every sampled row" if s.present == len(rows) else f"{share:.0%} of sampled rows"
        nulls = s.kinds.get("null", 0)
        out.append(f"# seen in {seen}" + (f", null in {nulls}" if nulls else ""))
        out += [f"# {note}" for note in notes]
    return "\n".join(out) + "\n"


def _s(text: str) -> str:
    return orjson.dumps(text).decode()
