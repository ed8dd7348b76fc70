"""Accounting list queries: paging, If-Modified-Since, order, Statuses, IDs, where.

The common case (no filter, ordered by UpdatedDateUTC) is answered from the generator's ordered view in
O(page) time. Anything else is materialised once per (query, data version) into a compact index array and
cached, as a real database would plan it; ``max_scan_rows`` can make large scans fail the way Xero answers
inefficient queries on very large organisations (HTTP 400).
"""

from __future__ import annotations

import re
import threading
import uuid
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
#
# Each field: (type, getter(t, kind, st), kinds it exists on). Types: str, guid, num, date, bool.

_ALL = ("Invoices", "CreditNotes", "Payments", "Contacts", "Accounts")
_DOCS = ("Invoices", "CreditNotes")
_MONEY = ("Invoices", "CreditNotes", "Payments")


def _payment_type(t: TenantData, st: dict) -> str:
    inv = t.invoice(st["invoice"])
    return "ACCRECPAYMENT" if inv and inv["type"] == "ACCREC" else "ACCPAYPAYMENT"


def _contact_name(t: TenantData, st: dict) -> str:
    c = t.contact(st["contact"])
    return c["name"] if c else ""


_FIELDS: dict[str, tuple[str, Callable[[TenantData, str, dict], object], tuple[str, ...]]] = {
    "updateddateutc": ("date", lambda t, k, st: st["updated_ms"], _ALL),
    "status": ("str", lambda t, k, st: st["status"], _ALL),
    "contactstatus": ("str", lambda t, k, st: st["status"], ("Contacts",)),
    "date": ("date", lambda t, k, st: st["date_day"] * DAY_MS, _MONEY),
    "duedate": ("date", lambda t, k, st: st.get("due_day", 0) * DAY_MS, ("Invoices",)),
    "total": ("num", lambda t, k, st: cents_to_decimal(st.get("total", 0)), _DOCS),
    "subtotal": ("num", lambda t, k, st: cents_to_decimal(st.get("subtotal", 0)), _DOCS),
    "totaltax": ("num", lambda t, k, st: cents_to_decimal(st.get("total_tax", 0)), _DOCS),
    "amount": ("num", lambda t, k, st: cents_to_decimal(st.get("amount", 0)), ("Payments",)),
    "amountdue": ("num", lambda t, k, st: cents_to_decimal(t.amount_due(st)), ("Invoices",)),
    "amountpaid": ("num", lambda t, k, st: cents_to_decimal(st.get("paid", 0)), ("Invoices",)),
    "amountcredited": ("num", lambda t, k, st: cents_to_decimal(st.get("credited", 0)), ("Invoices",)),
    "type": (
        "str",
        lambda t, k, st: _payment_type(t, st) if k == "Payments" else st.get("type"),
        ("Invoices", "CreditNotes", "Payments", "Accounts"),
    ),
    "paymenttype": ("str", lambda t, k, st: _payment_type(t, st), ("Payments",)),
    "invoicenumber": ("str", lambda t, k, st: st.get("number", ""), ("Invoices",)),
    "creditnotenumber": ("str", lambda t, k, st: st.get("number", ""), ("CreditNotes",)),
    "invoice.invoicenumber": (
        "str",
        lambda t, k, st: (t.invoice(st["invoice"]) or {}).get("number", ""),
        ("Payments",),
    ),
    "reference": ("str", lambda t, k, st: st.get("reference", ""), _MONEY),
    "currencycode": ("str", lambda t, k, st: st.get("currency") or t.base_currency, _DOCS + ("Contacts",)),
    "contact.contactid": ("guid", lambda t, k, st: t.encode_id("Contacts", st["contact"]), _DOCS),
    "contactid": (
        "guid",
        lambda t, k, st: t.encode_id("Contacts", st["idx"] if k == "Contacts" else st["contact"]),
        _DOCS + ("Contacts",),
    ),
    "contact.name": ("str", lambda t, k, st: _contact_name(t, st), _DOCS),
    "invoiceid": ("guid", lambda t, k, st: t.encode_id("Invoices", st["idx"]), ("Invoices",)),
    "creditnoteid": ("guid", lambda t, k, st: t.encode_id("CreditNotes", st["idx"]), ("CreditNotes",)),
    "paymentid": ("guid", lambda t, k, st: t.encode_id("Payments", st["idx"]), ("Payments",)),
    "accountid": ("guid", lambda t, k, st: t.encode_id("Accounts", st["idx"]), ("Accounts",)),
    "invoice.invoiceid": ("guid", lambda t, k, st: t.encode_id("Invoices", st["invoice"]), ("Payments",)),
    "name": ("str", lambda t, k, st: st.get("name", ""), ("Contacts", "Accounts")),
    "firstname": ("str", lambda t, k, st: st.get("first", ""), ("Contacts",)),
    "lastname": ("str", lambda t, k, st: st.get("last", ""), ("Contacts",)),
    "emailaddress": ("str", lambda t, k, st: st.get("email", ""), ("Contacts",)),
    "iscustomer": ("bool", lambda t, k, st: bool(st.get("is_customer")), ("Contacts",)),
    "issupplier": ("bool", lambda t, k, st: bool(st.get("is_supplier")), ("Contacts",)),
    "accountnumber": ("str", lambda t, k, st: st.get("account_number"), ("Contacts",)),
    "isreconciled": ("bool", lambda t, k, st: bool(st.get("reconciled")), ("Payments",)),
    "code": ("str", lambda t, k, st: st.get("code", ""), ("Accounts",)),
    "class": ("str", lambda t, k, st: st.get("class", ""), ("Accounts",)),
    "taxtype": ("str", lambda t, k, st: st.get("tax", ""), ("Accounts",)),
    "description": ("str", lambda t, k, st: st.get("description", ""), ("Accounts",)),
    "enablepaymentstoaccount": ("bool", lambda t, k, st: False, ("Accounts",)),
    "bankaccounttype": ("str", lambda t, k, st: "BANK" if st.get("bank") else None, ("Accounts",)),
}


def resolve_field(kind: str, name: str) -> tuple[str, Callable[[TenantData, dict], object]]:
    """(type, getter) of a where/order field of ``kind``; ValidationError for an unknown one."""
    n = name.strip()
    got = _FIELDS.get(n.lower())
    if got is None or kind not in got[2]:
        singular = kind[:-1] if kind.endswith("s") else kind
        raise ValidationError(f"No property or field '{n}' exists in type '{singular}'")
    typ, getter, _ = got
    return typ, lambda t, st: getter(t, kind, st)


def field_value(t: TenantData, kind: str, st: dict, name: str) -> object:
    return resolve_field(kind, name)[1](t, st)


# -- the where clause ---------------------------------------------------------------------------------
#
# A small recursive-descent parser for the subset of Dynamic LINQ that Xero's ``where`` accepts:
#   expr  := and ( (OR | "||") and )*
#   and   := unary ( (AND | "&&") unary )*
#   unary := (NOT | "!") unary | "(" expr ")" | test
#   test  := Field op literal | Field.StartsWith("x") | Field.EndsWith("x") | Field.Contains("x")
#            | literal op Field | BoolField
#   literal := "string" | number | true | false | null | DateTime(y, m, d[, h, mi, s]) | Guid("…")
# Anything else, an unknown field, or a literal of the wrong type answers 400 (never silently no rows).

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<str>"(?:[^"\\]|\\.)*")
      | (?P<num>-?\d+(?:\.\d+)?(?![A-Za-z_]))
      | (?P<op>==|!=|<>|>=|<=|&&|\|\||=|>|<|!|\(|\)|,)
      | (?P<ident>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
    )""",
    re.X,
)
_METHODS = {"startswith": "StartsWith", "endswith": "EndsWith", "contains": "Contains"}
_CMP = {"==": "==", "=": "==", "!=": "!=", "<>": "!=", ">=": ">=", "<=": "<=", ">": ">", "<": "<"}
_FLIP = {"==": "==", "!=": "!=", ">=": "<=", "<=": ">=", ">": "<", "<": ">"}
_TYPE_NAMES = {
    "str": "String",
    "guid": "Guid",
    "num": "Decimal",
    "date": "DateTime",
    "bool": "Boolean",
    "null": "Object",
}


def _tokenize(where: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos, n = 0, len(where)
    while pos < n:
        if where[pos:].strip() == "":
            break
        m = _TOKEN.match(where, pos)
        if not m or m.end() == pos:
            raise ValidationError(f"Unable to parse the where clause: syntax error at position {pos}")
        kind = m.lastgroup or ""
        out.append((kind, m[kind]))
        pos = m.end()
    return out


Pred = Callable[[TenantData, dict], bool]


class _WhereParser:
    def __init__(self, where: str, kind: str) -> None:
        self.where, self.kind = where, kind
        self.toks = _tokenize(where)
        self.i = 0

    def fail(self, why: str = "syntax error") -> ValidationError:
        return ValidationError(f"Unable to parse the where clause {self.where!r}: {why}")

    def peek(self, k: int = 0) -> tuple[str, str] | None:
        j = self.i + k
        return self.toks[j] if j < len(self.toks) else None

    def take(self) -> tuple[str, str]:
        tok = self.peek()
        if tok is None:
            raise self.fail("unexpected end")
        self.i += 1
        return tok

    def expect(self, value: str) -> None:
        tok = self.take()
        if tok[1] != value:
            raise self.fail(f"expected {value!r}, found {tok[1]!r}")

    def is_word(self, *words: str) -> bool:
        tok = self.peek()
        return tok is not None and tok[0] == "ident" and tok[1].upper() in words

    def is_op(self, *ops: str) -> bool:
        tok = self.peek()
        return tok is not None and tok[0] == "op" and tok[1] in ops

    def parse(self) -> Pred:
        if not self.toks:
            raise self.fail("empty")
        pred = self.expr()
        if self.peek() is not None:
            raise self.fail(f"unexpected {self.peek()[1]!r}")  # type: ignore[index]
        return pred

    def expr(self) -> Pred:
        alts = [self.conj()]
        while self.is_word("OR") or self.is_op("||"):
            self.take()
            alts.append(self.conj())
        if len(alts) == 1:
            return alts[0]
        return lambda t, st: any(p(t, st) for p in alts)

    def conj(self) -> Pred:
        parts = [self.unary()]
        while self.is_word("AND") or self.is_op("&&"):
            self.take()
            parts.append(self.unary())
        if len(parts) == 1:
            return parts[0]
        return lambda t, st: all(p(t, st) for p in parts)

    def unary(self) -> Pred:
        if self.is_word("NOT") or self.is_op("!"):
            self.take()
            inner = self.unary()
            return lambda t, st: not inner(t, st)
        if self.is_op("("):
            self.take()
            inner = self.expr()
            self.expect(")")
            return inner
        return self.test()

    def literal(self) -> tuple[str, object]:
        kind, text = self.take()
        if kind == "str":
            return "str", re.sub(r"\\(.)", r"\1", text[1:-1])
        if kind == "num":
            return "num", Decimal(text)
        if kind == "ident":
            low = text.lower()
            if low in ("true", "false"):
                return "bool", low == "true"
            if low == "null":
                return "null", None
            if low == "datetime":
                self.expect("(")
                nums = [self._int()]
                while self.is_op(","):
                    self.take()
                    nums.append(self._int())
                self.expect(")")
                if len(nums) not in (3, 6):
                    raise self.fail("DateTime takes (year, month, day[, hour, minute, second])")
                try:
                    dt = datetime(*nums, tzinfo=UTC)  # type: ignore[misc]
                except ValueError as exc:
                    raise self.fail(str(exc)) from None
                return "date", int(dt.timestamp() * 1000)
            if low == "guid":
                self.expect("(")
                k, g = self.take()
                self.expect(")")
                try:
                    return "guid", str(uuid.UUID(g.strip('"')))
                except ValueError:
                    raise self.fail(f"{g} is not a valid GUID") from None
        raise self.fail(f"expected a value, found {text!r}")

    def _int(self) -> int:
        kind, text = self.take()
        if kind != "num" or not text.lstrip("-").isdigit():
            raise self.fail(f"expected a whole number, found {text!r}")
        return int(text)

    def test(self) -> Pred:
        tok = self.peek()
        if tok is None:
            raise self.fail("unexpected end")
        if tok[0] != "ident" or tok[1].lower() in ("true", "false", "null", "datetime", "guid"):
            # literal op Field
            lit = self.literal()
            op_tok = self.take()
            if op_tok[0] != "op" or op_tok[1] not in _CMP:
                raise self.fail(f"expected a comparison, found {op_tok[1]!r}")
            name = self.take()
            if name[0] != "ident":
                raise self.fail(f"expected a field, found {name[1]!r}")
            return self.compare(name[1], _FLIP[_CMP[op_tok[1]]], lit)
        self.take()
        path = tok[1]
        head, _, last = path.rpartition(".")
        if head and last.lower() in _METHODS and self.is_op("("):
            self.take()
            lit = self.literal()
            self.expect(")")
            return self.method(head, _METHODS[last.lower()], lit)
        if self.is_op(*_CMP):
            op = _CMP[self.take()[1]]
            return self.compare(path, op, self.literal())
        typ, get = resolve_field(self.kind, path)
        if typ == "bool":  # a bare boolean field, e.g. IsCustomer
            return lambda t, st: bool(get(t, st))
        raise self.fail(f"expected a comparison after {path!r}")

    def method(self, path: str, name: str, lit: tuple[str, object]) -> Pred:
        typ, get = resolve_field(self.kind, path)
        if typ not in ("str", "guid") or lit[0] != "str":
            raise ValidationError(
                f"No applicable method '{name}' exists for '{path}' ({_TYPE_NAMES[typ]}) "
                f"with a {_TYPE_NAMES[lit[0]]} argument"
            )
        arg = str(lit[1])
        if typ == "guid":
            arg = arg.lower()
        fn = {"StartsWith": str.startswith, "EndsWith": str.endswith, "Contains": str.__contains__}[name]

        def pred(t: TenantData, st: dict) -> bool:
            v = get(t, st)
            return v is not None and fn(str(v).lower() if typ == "guid" else str(v), arg)

        return pred

    def compare(self, path: str, op: str, lit: tuple[str, object]) -> Pred:
        typ, get = resolve_field(self.kind, path)
        ltyp, value = lit
        if ltyp == "null":
            if op not in ("==", "!="):
                raise ValidationError(
                    f"Operator '{op}' incompatible with operand types '{_TYPE_NAMES[typ]}' and null"
                )
            want_null = op == "=="
            return lambda t, st: (get(t, st) in (None, "")) == want_null
        ok = ltyp == typ or (typ == "guid" and ltyp == "str")
        if typ == "bool" and op not in ("==", "!="):
            ok = False
        if not ok:
            raise ValidationError(
                f"Operator '{op}' incompatible with operand types '{_TYPE_NAMES[typ]}' and "
                f"'{_TYPE_NAMES[ltyp]}' ({path})"
            )
        if typ == "guid":
            value = str(value).lower()
        cmp = {
            "==": lambda a, b: a == b,
            "!=": lambda a, b: a != b,
            ">=": lambda a, b: a >= b,
            "<=": lambda a, b: a <= b,
            ">": lambda a, b: a > b,
            "<": lambda a, b: a < b,
        }[op]

        def pred(t: TenantData, st: dict) -> bool:
            v = get(t, st)
            if v is None:
                return op == "!="
            if typ == "guid":
                v = str(v).lower()
            return cmp(v, value)

        return pred


def parse_where(where: str | None, kind: str, t: TenantData | None = None) -> Callable[[dict], bool] | None:
    """Compile Xero's ``where`` for ``kind`` into a predicate over generator states (None when empty)."""
    if not where or not where.strip():
        return None
    pred = _WhereParser(where.strip(), kind).parse()
    if t is None:
        return lambda st: True  # validation only
    return lambda st: pred(t, st)


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
        resolve_field(kind, bits[0])  # unknown fields are a 400, whether or not any row is scanned
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
    parse_where(params.get("where"), kind)  # a bad clause is a 400 whatever else the query says
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
        rows.sort(key=lambda r, p=pos: sortable(r[0][p]), reverse=desc)
    return array("q", (r[2] for r in rows))


def sortable(v: object) -> tuple:
    if v is None:
        return (0, "")
    if isinstance(v, bool):
        return (1, int(v))
    if isinstance(v, (int, Decimal)):
        return (1, v)
    return (2, str(v))


class PageCache:
    """LRU of serialised list pages (the JSON of a page's records, and its pagination), bounded in bytes.

    A page's records depend only on the tenant's data version, the query, the page and the rendering
    options (and, for contacts' balances, the sandbox day): the key holds all of them, so a mutation
    makes every older entry unreachable. It is what keeps a warm sandbox out of the way of a benchmark
    (generating a 1,000-invoice page costs ~80 ms of Python; a cached one is sent in a few ms)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._d: OrderedDict[tuple, tuple[bytes, dict]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple) -> tuple[bytes, dict] | None:
        with self._lock:
            got = self._d.get(key)
            if got is not None:
                self._d.move_to_end(key)
            return got

    def put(self, key: tuple, items: bytes, pagination: dict) -> None:
        if len(items) > self.max_bytes:
            return
        with self._lock:
            if key in self._d:
                return
            self._d[key] = (items, pagination)
            self.bytes += len(items)
            while self.bytes > self.max_bytes:
                _, (old, _) = self._d.popitem(last=False)
                self.bytes -= len(old)
