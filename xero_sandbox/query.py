"""Accounting list queries: paging, If-Modified-Since, order, Statuses, IDs, where.

The common case (no filter, ordered by UpdatedDateUTC) is answered from the generator's ordered view in
O(page) time. Anything else is materialised once per (query, data version) into a compact index array and
cached, as a real database would plan it; ``max_scan_rows`` can make large scans fail the way Xero answers
inefficient queries on very large organisations (HTTP 400).
"""

from __future__ import annotations

import re
import threading
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from email.utils import parsedate_to_datetime

from .data import DAY_MS, TenantData, cents_to_decimal


class ValidationError(Exception):
    """Rendered as Xero's 400 ValidationException."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


PAGED = ("Invoices", "Contacts", "Payments", "CreditNotes")
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100


def parse_if_modified_since(value: str | None) -> int | None:
    """Xero accepts an HTTP date or an ISO 8601 timestamp (UTC when no offset is given). Returns epoch ms."""
    if not value:
        return None
    v = value.strip()
    dt: datetime | None = None
    try:
        dt = parsedate_to_datetime(v)
    except (TypeError, ValueError, IndexError):
        dt = None
    if dt is None:
        try:
            dt = datetime.fromisoformat(v.replace("Z", "+00:00"))
        except ValueError as exc:
            raise ValidationError(
                f"The If-Modified-Since header value '{value}' is not a valid date"
            ) from exc
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


# -- field access for where/order ---------------------------------------------------------------------


def field_value(t: TenantData, kind: str, st: dict, name: str) -> object:
    n = name.strip()
    low = n.lower()
    if low in ("updateddateutc",):
        return st["updated_ms"]
    if low == "status" or low == "contactstatus":
        return st["status"]
    if low in ("date",):
        return st["date_day"] * DAY_MS
    if low == "duedate":
        return st.get("due_day", 0) * DAY_MS
    if low in ("total", "subtotal", "totaltax", "amount"):
        key = {"total": "total", "subtotal": "subtotal", "totaltax": "total_tax", "amount": "amount"}[low]
        return cents_to_decimal(st.get(key, 0))
    if low == "amountdue":
        return cents_to_decimal(t.amount_due(st))
    if low == "amountpaid":
        return cents_to_decimal(st.get("paid", 0))
    if low == "type":
        if kind == "Payments":
            inv = t.invoice(st["invoice"])
            return "ACCRECPAYMENT" if inv and inv["type"] == "ACCREC" else "ACCPAYPAYMENT"
        return st.get("type")
    if low in ("invoicenumber", "creditnotenumber"):
        return st.get("number", "")
    if low == "reference":
        return st.get("reference", "")
    if low == "currencycode":
        return st.get("currency")
    if low in ("contact.contactid", "contactid"):
        if kind == "Contacts":
            return t.encode_id("Contacts", st["idx"])
        return t.encode_id("Contacts", st["contact"])
    if low == "contact.name":
        c = t.contact(st["contact"])
        return c["name"] if c else ""
    if low in ("invoiceid", "paymentid", "creditnoteid"):
        return t.encode_id(kind, st["idx"])
    if low == "invoice.invoiceid":
        return t.encode_id("Invoices", st["invoice"])
    if low == "name":
        return st.get("name", "")
    if low == "emailaddress":
        return st.get("email", "")
    if low == "iscustomer":
        return st.get("is_customer")
    if low == "issupplier":
        return st.get("is_supplier")
    if low == "accountnumber":
        return st.get("account_number")
    raise ValidationError(f"No property or field '{n}' exists in type '{kind[:-1]}'")


_COND = re.compile(r"^\s*([A-Za-z.]+)\s*(==|!=|>=|<=|>|<)\s*(.+?)\s*$")
_DATETIME = re.compile(r"^DateTime\((\d{4})\s*,\s*(\d{1,2})\s*,\s*(\d{1,2})\)$", re.I)
_GUID = re.compile(r'^Guid\("([0-9a-fA-F-]{36})"\)$', re.I)


def _literal(raw: str) -> object:
    raw = raw.strip()
    if raw.startswith('"') and raw.endswith('"') and len(raw) >= 2:
        return raw[1:-1]
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    m = _DATETIME.match(raw)
    if m:
        return int(datetime(int(m[1]), int(m[2]), int(m[3]), tzinfo=UTC).timestamp() * 1000)
    m = _GUID.match(raw)
    if m:
        return m[1].lower()
    try:
        return Decimal(raw)
    except Exception as exc:
        raise ValidationError(f"Unable to parse the where clause value {raw!r}") from exc


def parse_where(where: str | None, kind: str, t: TenantData) -> Callable[[dict], bool] | None:
    if not where or not where.strip():
        return None
    parts = re.split(r"\s+(?:AND|and)\s+|\s*&&\s*", where.strip())
    conds = []
    for p in parts:
        m = _COND.match(p)
        if not m:
            raise ValidationError(f"Unable to parse the where clause: {where!r}")
        field_name, op, lit = m[1], m[2], _literal(m[3])
        conds.append((field_name, op, lit))

    ops: dict[str, Callable[[object, object], bool]] = {
        "==": lambda a, b: a == b,
        "!=": lambda a, b: a != b,
        ">=": lambda a, b: a >= b,  # type: ignore[operator]
        "<=": lambda a, b: a <= b,
        ">": lambda a, b: a > b,
        "<": lambda a, b: a < b,  # type: ignore[operator]
    }

    def pred(st: dict) -> bool:
        for f, op, lit in conds:
            v = field_value(t, kind, st, f)
            if isinstance(v, str) and isinstance(lit, str) and f.lower().endswith("id"):
                v = v.lower()
            try:
                if not ops[op](v, lit):
                    return False
            except TypeError as exc:
                raise ValidationError(f"Operator '{op}' incompatible with operand types for {f}") from exc
        return True

    return pred


def parse_order(order: str | None, kind: str, t: TenantData) -> list[tuple[str, bool]]:
    if not order or not order.strip():
        return [("UpdatedDateUTC", False)]
    out = []
    for part in order.split(","):
        bits = part.split()
        if not bits or len(bits) > 2:
            raise ValidationError(f"Invalid order clause {order!r}")
        desc = len(bits) == 2 and bits[1].upper() == "DESC"
        if len(bits) == 2 and bits[1].upper() not in ("ASC", "DESC"):
            raise ValidationError(f"Invalid order direction in {order!r}")
        out.append((bits[0], desc))
    return out


@dataclass
class Query:
    kind: str
    page: int | None
    page_size: int
    ims_ms: int | None
    order: list[tuple[str, bool]]
    statuses: list[str]
    ids: list[int] | None
    contact_ids: list[int] | None
    numbers: list[str] | None
    where: str | None
    include_archived: bool

    def is_fast(self) -> bool:
        return (
            not self.statuses
            and self.ids is None
            and self.contact_ids is None
            and not self.numbers
            and not self.where
            and (self.kind != "Contacts" or self.include_archived)
            and len(self.order) == 1
            and self.order[0][0].lower() == "updateddateutc"
        )

    def signature(self) -> tuple:
        return (
            self.kind,
            self.ims_ms,
            tuple(self.order),
            tuple(self.statuses),
            None if self.contact_ids is None else tuple(self.contact_ids),
            None if self.numbers is None else tuple(self.numbers),
            self.where,
            self.include_archived,
        )


def _split(v: str | None) -> list[str]:
    return [x.strip() for x in (v or "").split(",") if x.strip()]


def build_query(
    t: TenantData, kind: str, params: dict[str, str], ims_header: str | None, granularity_s: int
) -> Query:
    def int_param(name: str, default: int | None) -> int | None:
        raw = params.get(name)
        if raw is None or raw == "":
            return default
        try:
            return int(raw)
        except ValueError as exc:
            raise ValidationError(f"The value '{raw}' is not valid for {name}.") from exc

    page = int_param("page", None)
    if page is not None and page < 1:
        page = 1  # Xero treats page 0 / negatives as the first page
    size = int_param("pageSize", DEFAULT_PAGE_SIZE) or DEFAULT_PAGE_SIZE
    if size < 1:
        raise ValidationError("pageSize must be a positive integer")
    if size > MAX_PAGE_SIZE:
        raise ValidationError(f"pageSize must be less than or equal to {MAX_PAGE_SIZE}")
    ims = parse_if_modified_since(ims_header)
    if ims is not None and granularity_s:
        ims -= ims % (granularity_s * 1000)
        ims -= 1  # compare as ">=" the truncated instant: a little overlap, never a gap
    ids = None
    if params.get("IDs") or params.get("ids"):
        ids = []
        for raw in _split(params.get("IDs") or params.get("ids")):
            idx = t.decode_id(kind, raw)
            if idx is None:
                try:
                    import uuid

                    uuid.UUID(raw)
                except ValueError as exc:
                    raise ValidationError(f"'{raw}' is not a valid GUID") from exc
                continue
            ids.append(idx)
    contact_ids = None
    if params.get("ContactIDs"):
        contact_ids = [
            i for i in (t.decode_id("Contacts", r) for r in _split(params["ContactIDs"])) if i is not None
        ]
    statuses = [s.upper() for s in _split(params.get("Statuses") or params.get("statuses"))]
    numbers = _split(params.get("InvoiceNumbers")) or None
    order = parse_order(params.get("order"), kind, t)
    return Query(
        kind,
        page,
        size,
        ims,
        order,
        statuses,
        ids,
        contact_ids,
        numbers,
        params.get("where"),
        params.get("includeArchived", "").lower() == "true",
    )


class QueryCache:
    """LRU of materialised result index arrays keyed by (tenant, version, query signature)."""

    def __init__(self, size: int = 8) -> None:
        self.size = size
        self._d: OrderedDict[tuple, array] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple) -> array | None:
        with self._lock:
            got = self._d.get(key)
            if got is not None:
                self._d.move_to_end(key)
            return got

    def put(self, key: tuple, value: array) -> None:
        with self._lock:
            self._d[key] = value
            while len(self._d) > self.size:
                self._d.popitem(last=False)


def iter_ordered(t: TenantData, kind: str, after_ms: int | None, chunk: int = 4096) -> Iterator[int]:
    n = t.ordered_count(kind, after_ms)
    for s in range(0, n, chunk):
        yield from t.ordered_slice(kind, after_ms, s, min(n, s + chunk))


def run_query(t: TenantData, q: Query, cache: QueryCache, max_scan: int | None) -> tuple[list[dict], int]:
    """Returns (states of the requested page, total item count)."""
    page = q.page or 1
    start, stop = (page - 1) * q.page_size, page * q.page_size
    if q.is_fast():
        n = t.ordered_count(q.kind, q.ims_ms)
        desc = q.order[0][1]
        if desc:
            a, b = max(0, n - stop), max(0, n - start)
            idxs = list(reversed(t.ordered_slice(q.kind, q.ims_ms, a, b)))
        else:
            idxs = t.ordered_slice(q.kind, q.ims_ms, start, min(stop, n))
        return [st for st in (t.get(q.kind, i) for i in idxs) if st is not None], n
    key = (t.info.tenant_id, t.version, q.signature(), tuple(q.ids) if q.ids is not None else None)
    arr = cache.get(key)
    if arr is None:
        arr = _materialise(t, q, max_scan)
        cache.put(key, arr)
    return [st for st in (t.get(q.kind, i) for i in arr[start:stop]) if st is not None], len(arr)


def _materialise(t: TenantData, q: Query, max_scan: int | None) -> array:
    pred = parse_where(q.where, q.kind, t)
    statuses = set(q.statuses)
    contacts = set(q.contact_ids) if q.contact_ids is not None else None
    numbers = set(q.numbers) if q.numbers else None
    if q.ids is not None:
        source: Iterator[int] = iter(dict.fromkeys(q.ids))
    else:
        total = t.ordered_count(q.kind, q.ims_ms)
        # Only the client's own filters count as inefficient (not Xero's default of hiding archived contacts).
        client_filtered = bool(q.statuses or q.contact_ids is not None or q.numbers or q.where) or not (
            len(q.order) == 1 and q.order[0][0].lower() == "updateddateutc")
        if max_scan is not None and total > max_scan and client_filtered:
            raise ValidationError(
                f"The query would scan {total} {q.kind}; filter with If-Modified-Since or page without "
                "filters on organisations this large"
            )
        source = iter_ordered(t, q.kind, q.ims_ms)
    rows: list[tuple] = []
    for idx in source:
        st = t.get(q.kind, idx)
        if st is None:
            continue
        if q.ids is not None and q.ims_ms is not None and st["updated_ms"] <= q.ims_ms:
            continue
        if statuses and st.get("status") not in statuses:
            continue
        if q.kind == "Contacts" and not q.include_archived and q.ids is None and st["status"] == "ARCHIVED":
            continue
        if contacts is not None and st.get("contact") not in contacts:
            continue
        if numbers is not None and st.get("number") not in numbers:
            continue
        if pred is not None and not pred(st):
            continue
        keys = tuple(field_value(t, q.kind, st, f) for f, _ in q.order)
        rows.append((keys, st["updated_ms"], idx))
    # Stable multi-key sort: apply keys from last to first.
    rows.sort(key=lambda r: (r[1], r[2]))
    for pos in range(len(q.order) - 1, -1, -1):
        desc = q.order[pos][1]
        rows.sort(key=lambda r, p=pos: _sortable(r[0][p]), reverse=desc)
    return array("q", (r[2] for r in rows))


def _sortable(v: object) -> tuple:
    if v is None:
        return (0, "")
    if isinstance(v, bool):
        return (1, int(v))
    if isinstance(v, (int, Decimal)):
        return (1, v)
    return (2, str(v))
