"""A page of Xero records as an Arrow table, typed as the raw table's columns say.

dlt loads Arrow tables without looking at each row (a Parquet file, copied into PostgreSQL in its
binary format through ADBC), so the per-record Python work is what is done here, column by column:
typing each value once and checking it at the same time. A record with a value its column cannot
hold (a date that is no date, an amount that is not a number, a missing id) is left out of the
table and reported with every problem it has.

How values are carried:
- amounts: exact decimals (`numeric`), made from the shortest text of the parsed double, which is
  the number Xero sent (a page with numbers longer than a double holds is parsed as Decimals, see
  `client.parse_body`). No amount passes through float arithmetic.
- Xero's `/Date(ms+0000)/` and ISO timestamps: UTC microseconds.
- nested objects and lists (line items, contact, allocations…): their JSON text, numbers as sent.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute
from dlt.common.normalizers.naming.snake_case import NamingConvention

_NAMING = NamingConvention()
_TIMESTAMP = pa.timestamp("us", tz="UTC")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Magnitudes the raw numeric columns hold: numeric(19,6), and numeric(28,10) for rates.
_DECIMAL_LIMIT = {19: 10 ** 13, 28: 10 ** 18}
_DEFAULT_DECIMAL = {"data_type": "decimal", "precision": 19, "scale": 6}
# Xero's .NET JSON date: milliseconds since the epoch; the offset is informational.
NET_DATE = re.compile(r"^/Date\((?P<ms>-?\d{1,15})(?:[+-]\d{4})?\)/$")
_ISO_OFFSET = re.compile(r"T.*(?:Z|[+-]\d\d:?\d\d)$")  # an ISO time's zone: "Z", "+13:00", "-0500"


@functools.cache
def snake(key: str) -> str:
    """dlt's column name for a Xero field (a record's few dozen keys: cached)."""
    return _NAMING.normalize_identifier(key)


def _json_default(value: Any) -> Any:
    """Decimals come only from a page with very long numbers: a float that reads back as the same
    decimal is the same JSON number; one that would not stays a string rather than be rounded."""
    if isinstance(value, Decimal):
        as_float = float(value)
        return as_float if Decimal(repr(as_float)) == value else str(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


def json_text(value: Any) -> str:
    return orjson.dumps(value, default=_json_default).decode()


def epoch_us(value: Any) -> int | None:
    """A Xero date (`/Date(1539993600000+0000)/`, an ISO timestamp, or a datetime) as UTC
    microseconds; None when it is no date. An ISO time without an offset is UTC, as Xero means it."""
    if isinstance(value, str):
        if value.startswith("/Date("):
            m = NET_DATE.match(value)
            return int(m["ms"]) * 1000 if m else None
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        delta = value - _EPOCH
        return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    return None


def as_datetime(value: Any) -> datetime | None:
    """A Xero date as an aware UTC datetime (None when it is no date)."""
    micros = epoch_us(value)
    return None if micros is None else _EPOCH + timedelta(microseconds=micros)


def is_date(value: Any) -> bool:
    return epoch_us(value) is not None


@dataclass
class PageTable:
    """What `page_table` made of one page."""

    table: pa.Table | None  # the records that could be typed (None: not one)
    kept: list[int]  # their positions in the page
    problems: dict[int, list[str]]  # position → why the record cannot be typed
    # Columns this page brought that no hint declares but need one: JSON objects (text to Arrow).
    hints: dict[str, dict[str, Any]] = field(default_factory=dict)


class _Problem(str):
    """What a converter returns instead of a value its column can hold: why not."""


def _number(limit: int) -> Callable[[str, Any], Any]:
    def convert(key: str, value: Any) -> Any:
        kind = type(value)
        if kind is float or kind is int or kind is Decimal:
            if abs(value) >= limit:
                return _Problem(f"{key} {value} is out of range")
            return value
        return _Problem(f"{key} {value!r} is not a number")
    return convert


def _timestamp(key: str, value: Any) -> Any:
    got = epoch_us(value)
    return _Problem(f"{key} {value!r} is not a date") if got is None else got


def _flag(key: str, value: Any) -> Any:
    return value if type(value) is bool else _Problem(f"{key} {value!r} is not true or false")


def _whole(key: str, value: Any) -> Any:
    return value if type(value) is int else _Problem(f"{key} {value!r} is not a whole number")


def _text(key: str, value: Any) -> Any:
    if type(value) is str:
        return value
    return json_text(value) if isinstance(value, dict | list) else str(value)


def _json(key: str, value: Any) -> Any:
    return json_text(value)


@dataclass(frozen=True)
class _Column:
    convert: Callable[[str, Any], Any]  # one value → what Arrow holds, or a _Problem
    arrow_type: pa.DataType
    as_is: frozenset[type] = frozenset()  # value types Arrow takes unchanged (no per-value call)
    limit: int | None = None  # numbers: the magnitude the column cannot reach


_NONE = type(None)
_EXACT_DOUBLE = 2 ** 53  # every whole number below it is exactly a double


def _column(hint: Mapping[str, Any]) -> _Column:
    kind = hint["data_type"]
    if kind == "decimal":
        precision, scale = hint.get("precision", 19), hint.get("scale", 6)
        limit = _DECIMAL_LIMIT.get(precision, 10 ** (precision - scale))
        return _Column(_number(limit), pa.decimal128(precision, scale), frozenset((float, int)), limit)
    if kind == "timestamp":
        return _Column(_timestamp, _TIMESTAMP)
    if kind == "bool":
        return _Column(_flag, pa.bool_(), frozenset((bool,)))
    if kind == "bigint":
        return _Column(_whole, pa.int64(), frozenset((int,)))
    if kind == "json":
        return _Column(_json, pa.string())
    return _Column(_text, pa.string(), frozenset((str,)))


def _decimals(texts: pa.Array, kind: pa.Decimal128Type) -> pa.Array:
    """Numbers written as text (a double's shortest text is the number Xero sent) as exact
    decimals; one with more decimal places than the column keeps is rounded as PostgreSQL does."""
    try:
        return texts.cast(kind)
    except pa.ArrowInvalid:
        step = Decimal(1).scaleb(-kind.scale)
        return pa.array([None if t is None else Decimal(t).quantize(step, ROUND_HALF_UP)
                         for t in texts.to_pylist()], kind)


def _all_dates(values: list[Any], kinds: set[type]) -> pa.Array | None:
    """A column of Xero dates, parsed by Arrow in one go when every value is one; else None."""
    if kinds != {str}:
        return None
    strings = pa.array(values, pa.string())
    ms = pyarrow.compute.struct_field(pyarrow.compute.extract_regex(strings, NET_DATE.pattern), "ms")
    if ms.null_count == strings.null_count:  # every /Date(ms+0000)/
        micros = pyarrow.compute.multiply(ms.cast(pa.int64()), 1000)
        return micros.cast(pa.timestamp("us")).cast(_TIMESTAMP)
    if ms.null_count < len(ms):
        return None  # some, not all: one by one
    # ISO timestamps: all without an offset (UTC, as Xero means it), or all with one ("Z", "+13:00").
    # The first value's form is tried first: a cast that fails reads every value (half a ms a page).
    kinds = [pa.timestamp("us"), _TIMESTAMP]
    if _ISO_OFFSET.search(next(v for v in values if v is not None)):
        kinds.reverse()
    for kind in kinds:
        try:
            return strings.cast(kind).cast(_TIMESTAMP)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
    return None


def _typed(key: str, values: list[Any], column: _Column, required: bool,
           problems: dict[int, list[str]]) -> pa.Array:
    """One column of a page as Arrow; each value it cannot hold is a problem of its record."""
    if column.convert is _json:  # nested values as their JSON text: no call per value but orjson's
        dumps = orjson.dumps
        return pa.array([None if v is None else dumps(v, default=_json_default) for v in values],
                        pa.binary()).cast(pa.string())
    kinds = set(map(type, values))
    if not required:
        kinds.discard(_NONE)
    is_decimal = pa.types.is_decimal(column.arrow_type)
    if column.arrow_type == _TIMESTAMP and (dates := _all_dates(values, kinds)) is not None:
        return dates
    if kinds <= column.as_is:  # the common case: every value already fits, checked by Arrow
        if not is_decimal:
            return pa.array(values, column.arrow_type)
        doubles = pa.array(values, pa.float64())
        largest = pyarrow.compute.max(pyarrow.compute.abs(doubles)).as_py() or 0
        if largest < min(column.limit or 0, _EXACT_DOUBLE):
            return _decimals(doubles.cast(pa.string()), column.arrow_type)
    out: list[Any] = []
    append = out.append
    for i, v in enumerate(values):
        if v is None and not required:
            append(None)
            continue
        got = v if type(v) is _Problem else column.convert(key, v)
        if type(got) is _Problem:
            problems.setdefault(i, []).append(got)
            append(None)
        else:
            append(got)
    if is_decimal:
        texts = [None if v is None else repr(v) if type(v) is float else str(v) for v in out]
        return _decimals(pa.array(texts, pa.string()), column.arrow_type)
    return pa.array(out, column.arrow_type)


def _inferred(values: list[Any]) -> tuple[dict[str, Any] | None, pa.Array | None]:
    """The column a field no hint declares gets, from this page's values (as dlt would infer it
    from the records): None when every value is null (no column, as dlt does). With it, the column
    itself when finding its type already made it (dates parsed in one go), else None."""
    kinds = set(map(type, values))
    kinds.discard(_NONE)
    if not kinds:
        return None, None
    if kinds == {bool}:
        return {"data_type": "bool"}, None
    if kinds == {int}:
        return {"data_type": "bigint"}, None
    if kinds <= {int, float, Decimal}:
        return dict(_DEFAULT_DECIMAL), None
    if kinds <= {dict, list}:
        return {"data_type": "json"}, None
    if kinds == {str}:
        sample = next(v for v in values if v is not None)
        looks_like_date = sample.startswith("/Date(") or (sample[:4].isdigit() and sample[4:5] == "-"
                                                           and "T" in sample)
        if looks_like_date:
            if (dates := _all_dates(values, kinds)) is not None:
                return {"data_type": "timestamp"}, dates
            if all(v is None or is_date(v) for v in values):
                return {"data_type": "timestamp"}, None
    return {"data_type": "text"}, None


def page_table(records: list[dict[str, Any]], tenant_id: str, id_field: str, versioned: bool,
               columns: Mapping[str, Mapping[str, Any]]) -> PageTable:
    """Type a page's records column by column as `columns` (hints by column name) say."""
    n = len(records)
    problems: dict[int, list[str]] = {}
    # The id and the version first, so a record's problems read in that order.
    first = (id_field, "UpdatedDateUTC") if versioned else (id_field,)
    keys = dict.fromkeys(itertools.chain(first, itertools.chain.from_iterable(records)))
    arrays: dict[str, pa.Array] = {}
    fields: dict[str, pa.Field] = {}
    hints: dict[str, dict[str, Any]] = {}
    for key in keys:
        name = snake(key)
        values = list(map(dict.get, records, itertools.repeat(key)))
        required = key in first
        array: pa.Array | None = None  # made while its type was inferred
        if key == id_field:
            hint: Mapping[str, Any] | None = {"data_type": "text"}
            values = [v if isinstance(v, str) and v else _Problem(f"{id_field} is missing") for v in values]
        elif required:
            hint = {"data_type": "timestamp"}
        else:
            hint = columns.get(name)
            if hint is None:
                hint, array = _inferred(values)
                if hint is None:
                    continue
                if hint["data_type"] == "json":
                    hints[name] = hint
        if array is None:
            array = _typed(key, values, _column(hint), required, problems)
        arrays[name] = array
        fields[name] = pa.field(name, array.type, nullable=not required)
    kept = [i for i in range(n) if i not in problems]
    if not kept:
        return PageTable(None, kept, problems, hints)
    table = pa.Table.from_arrays(
        [pa.array([tenant_id] * n, pa.string()), *arrays.values()],
        schema=pa.schema([pa.field("tenant_id", pa.string(), nullable=False), *fields.values()]))
    if problems:
        table = table.take(pa.array(kept, pa.int64()))
    return PageTable(table, kept, problems, hints)


def record_key(record: dict[str, Any], id_field: str) -> str:
    """A record's id, else (no usable id) a hash of the record as sent."""
    record_id = record.get(id_field)
    if isinstance(record_id, str) and record_id:
        return record_id
    as_sent = orjson.dumps(record, default=_json_default, option=orjson.OPT_SORT_KEYS)
    return "sha1:" + hashlib.sha1(as_sent, usedforsecurity=False).hexdigest()
