"""Deterministic, lazily generated Xero organisations.

Record ``i`` of a tenant is derived from ``blake2b(tenant key, kind, i)`` so any record can be produced on
demand without materialising the others; a tenant with 1,000,000 invoices costs a few small arrays.
Generated ``UpdatedDateUTC`` values increase with the record index and end at the configured anchor, so
``If-Modified-Since`` maps to a binary search. Run-time mutations live in an overlay and always carry the
sandbox clock's time, which starts at the anchor.

Amounts are integer cents inside the generator (exact, fast); the serialiser turns them into JSON numbers.
"""

from __future__ import annotations

import hashlib
import uuid
from array import array
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from datetime import date
from decimal import ROUND_HALF_UP, Decimal

from .config import SandboxConfig

DAY_MS = 86_400_000

# ---------------------------------------------------------------------------------------------------------
# Static reference data

# Currency units per 1 NZD (a fixed reference; real rates drift around these per day).
REF_RATES = {"NZD": 1.0, "AUD": 0.92, "USD": 0.60, "GBP": 0.47, "EUR": 0.55, "CAD": 0.82, "SGD": 0.80}

# country, base currency, foreign currencies, tax label, sale tax type, purchase tax type, rate (num, den)
COUNTRIES = [
    ("NZ", "NZD", ("AUD", "USD", "GBP"), "GST", "OUTPUT2", "INPUT2", (15, 100)),
    ("AU", "AUD", ("NZD", "USD", "EUR"), "GST", "OUTPUT", "INPUT", (10, 100)),
    ("GB", "GBP", ("EUR", "USD"), "VAT", "OUTPUT2", "INPUT2", (20, 100)),
    ("US", "USD", ("CAD", "EUR", "GBP"), "Sales Tax", "OUTPUT", "INPUT", (85, 1000)),
]
TIMEZONES = {
    "NZ": "NEWZEALANDSTANDARDTIME",
    "AU": "AUSEASTERNSTANDARDTIME",
    "GB": "GMTSTANDARDTIME",
    "US": "EASTERNSTANDARDTIME",
}

ORG_WORDS = [
    "Kauri",
    "Harbour",
    "Summit",
    "Riverside",
    "Pohutukawa",
    "Ironbark",
    "Coastal",
    "Granite",
    "Meadow",
    "Northern",
    "Silver Fern",
    "Copper",
    "Tui",
    "Lakeside",
    "Alpine",
    "Redwood",
]
ORG_KINDS = ["Coaching", "Consulting", "Plumbing", "Design", "Builders", "Fitness", "Bakery", "Studio"]
FIRST = [
    "Aroha",
    "Liam",
    "Olivia",
    "Noah",
    "Mia",
    "Wiremu",
    "Charlotte",
    "Jack",
    "Isla",
    "Leo",
    "Ava",
    "Hemi",
    "Grace",
    "Oliver",
    "Zoe",
    "Tama",
    "Ruby",
    "Max",
    "Ella",
    "Finn",
]
LAST = [
    "Smith",
    "Ngata",
    "Williams",
    "Brown",
    "Taylor",
    "Wilson",
    "Patel",
    "Nguyen",
    "Walker",
    "Parata",
    "Clarke",
    "Martin",
    "Cooper",
    "Kaur",
    "Young",
    "King",
    "Wright",
    "Hughes",
    "Moana",
    "Chen",
]
COMPANY_SUFFIX = ["Ltd", "Limited", "& Co", "Group", "Trust", "Holdings", "Partners"]
CITIES = [
    ("Auckland", "AKL", "1010"),
    ("Wellington", "WGN", "6011"),
    ("Sydney", "NSW", "2000"),
    ("London", "LDN", "EC1A"),
    ("Austin", "TX", "73301"),
    ("Christchurch", "CAN", "8011"),
]
ITEMS = [
    "Coaching session",
    "Strategy workshop",
    "Monthly retainer",
    "Travel",
    "Materials",
    "Consulting hours",
    "Software licence",
    "Training day",
    "Equipment hire",
    "Report preparation",
    "Site visit",
    "Support plan",
]
REFERENCES = ["", "", "PO-{n}", "Job {n}", "Q{q} retainer", "Order {n}"]

# Chart of accounts: (code, name, type, class, tax kind, status, bank account?)
ACCOUNTS = [
    ("090", "Business Bank Account", "BANK", "ASSET", "none", "ACTIVE", True),
    ("091", "Business Savings Account", "BANK", "ASSET", "none", "ACTIVE", True),
    ("200", "Sales", "REVENUE", "REVENUE", "sale", "ACTIVE", False),
    ("260", "Other Revenue", "REVENUE", "REVENUE", "sale", "ACTIVE", False),
    ("270", "Interest Income", "REVENUE", "REVENUE", "none", "ACTIVE", False),
    ("310", "Cost of Goods Sold", "DIRECTCOSTS", "EXPENSE", "purchase", "ACTIVE", False),
    ("400", "Advertising", "EXPENSE", "EXPENSE", "purchase", "ACTIVE", False),
    ("404", "Bank Fees", "EXPENSE", "EXPENSE", "none", "ACTIVE", False),
    ("420", "Entertainment", "EXPENSE", "EXPENSE", "purchase", "ACTIVE", False),
    ("429", "General Expenses", "EXPENSE", "EXPENSE", "purchase", "ACTIVE", False),
    ("453", "Office Expenses", "EXPENSE", "EXPENSE", "purchase", "ACTIVE", False),
    ("493", "Travel - National", "EXPENSE", "EXPENSE", "purchase", "ACTIVE", False),
    ("610", "Accounts Receivable", "CURRENT", "ASSET", "none", "ACTIVE", False),
    ("800", "Accounts Payable", "CURRLIAB", "LIABILITY", "none", "ACTIVE", False),
    ("820", "GST", "CURRLIAB", "LIABILITY", "none", "ACTIVE", False),
    ("970", "Owner A Funds Introduced", "EQUITY", "EQUITY", "none", "ACTIVE", False),
    ("480", "Old Marketing", "EXPENSE", "EXPENSE", "purchase", "ARCHIVED", False),
]
ACCOUNT_DESCRIPTIONS = {
    "200": "Income from any normal business activity",
    "260": "Any other income that does not relate to normal business activities",
    "400": "Expenses incurred for advertising while trying to increase sales",
    "404": "Fees charged by your bank for transactions regarding your bank account(s).",
    "429": "General expenses related to the running of the business.",
}
CONTACT_GROUPS = ["Coaching clients", "Suppliers", "VIP", "Wholesale"]
SALE_ACCOUNTS = ["200", "260"]
PURCHASE_ACCOUNTS = ["310", "400", "420", "429", "453", "493"]

INVOICE_STATUSES = ("DRAFT", "SUBMITTED", "AUTHORISED", "PAID", "VOIDED", "DELETED")
CREDIT_NOTE_STATUSES = INVOICE_STATUSES
LINE_AMOUNT_TYPES = ("Exclusive", "Inclusive", "NoTax")

_MASK62 = (1 << 62) - 1
_MULT = 0x2545F4914F6CDD1D & _MASK62 | 1  # odd => invertible modulo 2**62
_MULT_INV = pow(_MULT, -1, 1 << 62)
_VERSION_BITS = 0xF000


def cents_to_decimal(cents: int) -> Decimal:
    return Decimal(cents).scaleb(-2)


FRACTIONS = (250, 500, 750, 125, 333)  # thousandths taken off a whole quantity: 2.75, 0.5, 4.667, …


def line_amount(ln: dict) -> int:
    """LineAmount in cents: Quantity x UnitAmount (at its full 4 dp) rounded half up to 2 dp, as Xero does."""
    qty, unit4 = ln["qty"], ln.get("unit4")
    if unit4 is None and isinstance(qty, int):
        return qty * ln["unit"]
    if unit4 is None:
        unit4 = ln["unit"] * 100
    return int((Decimal(qty) * unit4 / 100).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def _half_up_div(num: int, den: int) -> int:
    """round(num / den) with halves away from zero, on integers (num >= 0)."""
    return (2 * num + den) // (2 * den)


# ---------------------------------------------------------------------------------------------------------
# Identifiers


class IdCodec:
    """Invertible, random-looking UUIDs: 64-bit prefix per (tenant, kind) + the index scrambled in 62 bits."""

    def __init__(self, tenant_key: bytes) -> None:
        self._key = tenant_key
        self._prefix: dict[str, tuple[int, int]] = {}

    def _kind(self, kind: str) -> tuple[int, int]:
        got = self._prefix.get(kind)
        if got is None:
            d = hashlib.blake2b(kind.encode(), key=self._key, digest_size=16).digest()
            hi = bytearray(d[:8])
            hi[6] = 0x40 | (hi[6] & 0x0F)  # version 4 look
            mask = int.from_bytes(d[8:], "big") & _MASK62
            got = (int.from_bytes(hi, "big"), mask)
            self._prefix[kind] = got
        return got

    def _spread(self, lo: int) -> int:
        # Mixes the low half into the high half so ids do not share a visible prefix.
        return int.from_bytes(
            hashlib.blake2b(lo.to_bytes(8, "big"), key=self._key, digest_size=8).digest(), "big"
        )

    def encode(self, kind: str, index: int) -> str:
        hi, mask = self._kind(kind)
        lo = (2 << 62) | ((index * _MULT + mask) & _MASK62)  # RFC 4122 variant bits
        hi = ((hi ^ self._spread(lo)) & ~_VERSION_BITS) | 0x4000  # version 4
        h = f"{hi:016x}{lo:016x}"  # formatted by hand: uuid.UUID is the hot spot of a 1000-row page
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

    def decode(self, kind: str, value: str) -> int | None:
        try:
            n = uuid.UUID(str(value)).int
        except (ValueError, AttributeError):
            return None
        hi, mask = self._kind(kind)
        lo = n & ((1 << 64) - 1)
        if ((n >> 64) ^ self._spread(lo)) & ~_VERSION_BITS != hi & ~_VERSION_BITS:
            return None
        return (((lo & _MASK62) - mask) * _MULT_INV) & _MASK62


def deterministic_uuid(*parts: object) -> str:
    d = bytearray(hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=16).digest())
    d[6] = 0x40 | (d[6] & 0x0F)
    d[8] = 0x80 | (d[8] & 0x3F)
    return str(uuid.UUID(bytes=bytes(d)))


# ---------------------------------------------------------------------------------------------------------
# Tenant


@dataclass(frozen=True)
class TenantInfo:
    tenant_id: str
    tenant_name: str
    index: int
    country: str
    base_currency: str
    short_code: str
    created_ms: int


class TenantData:
    """One organisation: base generator + mutation overlay.

    Records are plain dicts ("states") with integer cents; ``serialise.py`` turns them into Xero JSON.
    """

    def __init__(self, cfg: SandboxConfig, index: int) -> None:
        self.cfg = cfg
        self.index = index
        self.key = hashlib.blake2b(f"xero-sandbox|{cfg.seed}|{index}".encode(), digest_size=32).digest()
        self.ids = IdCodec(self.key)
        country = COUNTRIES[index % len(COUNTRIES)]
        (
            self.country,
            self.base_currency,
            self.foreign,
            self.tax_label,
            self.sale_tax,
            self.purchase_tax,
            self.tax_rate,
        ) = country
        rng = self._digest("org", 0)
        name = f"{ORG_WORDS[rng[0] % len(ORG_WORDS)]} {ORG_KINDS[rng[1] % len(ORG_KINDS)]}"
        if cfg.tenants > 1:
            name = f"{name} {index + 1}"
        self.anchor_ms = int(cfg.anchor.timestamp() * 1000)
        self.span_ms = cfg.history_days * DAY_MS
        self.start_ms = self.anchor_ms - self.span_ms
        self.info = TenantInfo(
            tenant_id=deterministic_uuid("tenant", cfg.seed, index),
            tenant_name=name,
            index=index,
            country=self.country,
            base_currency=self.base_currency,
            short_code="!" + "".join("ABCDEFGHJKLMNPQRSTUVWXYZ23456789"[b % 32] for b in rng[2:7]),
            created_ms=self.start_ms - 30 * DAY_MS,
        )
        digits = "".join(str(b % 10) for b in rng[7:18])
        self.tax_number = {
            "NZ": f"{digits[:3]}-{digits[3:6]}-{digits[6:9]}",  # GST number
            "AU": f"{digits[:2]} {digits[2:5]} {digits[5:8]} {digits[8:11]}",  # ABN
            "GB": f"GB{digits[:9]}",  # VAT registration
            "US": f"{digits[:2]}-{digits[2:9]}",  # EIN
        }[self.country]
        # Books are locked up to the last financial year end (31 March) before the anchor.
        anchor = cfg.anchor.date()
        year_end = date(anchor.year if (anchor.month, anchor.day) > (3, 31) else anchor.year - 1, 3, 31)
        self.lock_day = (year_end - date(1970, 1, 1)).days
        self.n_invoices = cfg.invoices_per_tenant
        self.n_contacts = cfg.n_contacts()
        self.inv_step = max(1, self.span_ms // max(1, self.n_invoices))
        self.con_step = max(1, self.span_ms // max(1, self.n_contacts))
        # Lazily built per-invoice columns (only needed for payments/credit-note paging and truth sums).
        self._pay_cum: array | None = None
        self._cn_cum: array | None = None
        # Overlay: kind -> idx -> state; "moved" = records whose UpdatedDateUTC changed at run time.
        self.overlay: dict[str, dict[int, dict]] = {
            "Invoices": {},
            "Contacts": {},
            "Payments": {},
            "CreditNotes": {},
        }
        self.moved: dict[str, list[tuple[int, int]]] = {k: [] for k in self.overlay}  # sorted (ms, idx)
        self.moved_pos: dict[str, list[int]] = {k: [] for k in self.overlay}  # sorted base positions
        self.created: dict[str, int] = {k: 0 for k in self.overlay}
        self.version = 0  # bumped on every mutation (invalidates query caches)
        self.history: dict[tuple[str, int], list[dict]] = {}
        self.offline = False
        self._inv_cache: dict[int, dict] = {}
        self.summary_cache: dict[int, dict] = {}  # contact summaries, see serialise.contact_summary
        self.branding_theme_id = self.ids.encode("B", 0)

    # -- randomness ------------------------------------------------------------------------------------

    def _digest(self, kind: str, i: int) -> bytes:
        return hashlib.blake2b(f"{kind}:{i}".encode(), key=self.key, digest_size=64).digest()

    # -- base sizes and ordering -----------------------------------------------------------------------

    def base_count(self, kind: str) -> int:
        if kind == "Invoices":
            return self.n_invoices
        if kind == "Contacts":
            return self.n_contacts
        if kind == "Payments":
            return self._payments_cum()[-1]
        if kind == "CreditNotes":
            return self._credit_cum()[-1]
        raise KeyError(kind)

    def base_idx_at(self, kind: str, pos: int) -> int:
        """Record index of the pos-th base record in UpdatedDateUTC order."""
        if kind in ("Invoices", "Contacts"):
            return pos
        if kind == "Payments":
            cum = self._payments_cum()
            inv = bisect_right(cum, pos) - 1
            return inv * 2 + (pos - cum[inv])
        cum = self._credit_cum()
        return bisect_right(cum, pos) - 1

    def base_pos_of(self, kind: str, idx: int) -> int:
        if kind in ("Invoices", "Contacts"):
            return idx
        if kind == "Payments":
            return self._payments_cum()[idx // 2] + idx % 2
        return self._credit_cum()[idx]

    def base_updated_at(self, kind: str, pos: int) -> int:
        return self.base_updated(kind, self.base_idx_at(kind, pos))

    def base_updated(self, kind: str, idx: int) -> int:
        if kind == "Invoices":
            return self._inv_updated(idx)
        if kind == "Contacts":
            return self.start_ms - 20 * DAY_MS + idx * self.con_step + (idx * 7919) % min(997, self.con_step)
        if kind == "Payments":
            # Just before the invoice was bumped to PAID/part-paid; keeps invoice order.
            return self._inv_updated(idx // 2) - (2 - idx % 2) * min(1000, self.inv_step // 4)
        return self._inv_updated(idx) - 3 * min(1000, self.inv_step // 4)

    def _inv_updated(self, i: int) -> int:
        return self.start_ms + i * self.inv_step + (i * 7919) % min(997, self.inv_step)

    def first_base_pos_after(self, kind: str, ms: int) -> int:
        """Smallest base position whose UpdatedDateUTC is > ms (binary search on a monotone function)."""
        lo, hi = 0, self.base_count(kind)
        while lo < hi:
            mid = (lo + hi) // 2
            if self.base_updated_at(kind, mid) > ms:
                hi = mid
            else:
                lo = mid + 1
        return lo

    # -- lazily built columns --------------------------------------------------------------------------

    def _payments_cum(self) -> array:
        if self._pay_cum is None:
            self._build_columns()
        return self._pay_cum  # type: ignore[return-value]

    def _credit_cum(self) -> array:
        if self._cn_cum is None:
            self._build_columns()
        return self._cn_cum  # type: ignore[return-value]

    def _build_columns(self) -> None:
        pay = array("q", [0])
        cn = array("q", [0])
        p = c = 0
        for i in range(self.n_invoices):
            status, npay, has_cn = self._invoice_flags(self._digest("inv", i))
            p += npay
            c += has_cn
            pay.append(p)
            cn.append(c)
        self._pay_cum, self._cn_cum = pay, cn

    # -- invoices --------------------------------------------------------------------------------------

    @staticmethod
    def _invoice_flags(d: bytes) -> tuple[str, int, int]:
        """(status, number of payments, has credit note) from the first bytes of an invoice digest."""
        r = d[0] * 256 + d[1]  # 0..65535
        if r < 3277:
            status = "DRAFT"  # 5%
        elif r < 5898:
            status = "SUBMITTED"  # 4%
        elif r < 22282:
            status = "AUTHORISED"  # 25%
        elif r < 60293:
            status = "PAID"  # 58%
        elif r < 63570:
            status = "VOIDED"  # 5%
        else:
            status = "DELETED"  # 3%
        if status == "PAID":
            has_cn = 1 if d[2] < 26 else 0  # ~10% partly settled by a credit note
            npay = 2 if d[3] < 77 else 1  # ~30% paid in two instalments
        elif status == "AUTHORISED":
            has_cn = 1 if d[2] < 13 else 0
            npay = 1 if d[3] < 128 else 0  # half are part-paid
        else:
            npay = 0
            has_cn = 1 if d[2] < 40 else 0  # a standalone credit note sharing the invoice's status
        return status, npay, has_cn

    def invoice(self, idx: int) -> dict | None:
        """Current state of invoice ``idx`` (overlay first), or None."""
        got = self.overlay["Invoices"].get(idx)
        if got is not None:
            return got
        if 0 <= idx < self.n_invoices:
            return self._base_invoice(idx)
        return None

    def _base_invoice(self, i: int) -> dict:
        # A payment or credit note is serialised with its invoice: a small cache avoids regenerating it.
        # Cached states are shared, so callers that change a state must copy it first (mutations do).
        got = self._inv_cache.get(i)
        if got is None:
            if len(self._inv_cache) >= 4096:
                self._inv_cache.clear()
            got = self._inv_cache[i] = self.generate_invoice(i)
        return got

    def base_invoice_status(self, i: int) -> str:
        """Generated status of invoice ``i``, without generating the rest of it."""
        return self._invoice_flags(self._digest("inv", i))[0]

    def generate_invoice(self, i: int) -> dict:
        """Generated state of invoice ``i``: a fresh dict, not cached (scans must not evict the cache)."""
        d = self._digest("inv", i)
        status, npay, has_cn = self._invoice_flags(d)
        acc_rec = d[4] < 192  # 75% sales
        updated = self._inv_updated(i)
        upd_day = updated // DAY_MS
        date_day = upd_day - (d[5] % 45) if status in ("AUTHORISED", "PAID") else upd_day - d[5] % 10
        terms = (7, 14, 20, 30)[d[6] % 4]
        currency = self.base_currency
        if d[7] < 51:  # 20% foreign currency
            currency = self.foreign[d[8] % len(self.foreign)]
        lat = "Exclusive" if d[9] < 205 else ("Inclusive" if d[9] < 243 else "NoTax")
        nlines = 1 + d[10] % 4
        lines = []
        for j in range(nlines):
            b = 11 + j * 6
            qty: int | Decimal = 1 + d[b] % 10
            unit = 500 + int.from_bytes(d[b + 1 : b + 4], "big") % 150_000
            if qty > 4:
                unit //= 4
            exempt = lat == "NoTax" or d[b + 4] < 20
            accounts = SALE_ACCOUNTS if acc_rec else PURCHASE_ACCOUNTS
            line = {
                "qty": qty,
                "unit": unit,
                "exempt": exempt,
                "account": accounts[d[b + 5] % len(accounts)],
                "item": (d[b + 5] + j) % len(ITEMS),
                "j": j,
            }
            if d[48 + j] < 13:  # ~5 %: a fractional quantity (hours, kilograms), up to 3 dp
                line["qty"] = Decimal(int(qty) * 1000 - FRACTIONS[d[52 + j] % len(FRACTIONS)]).scaleb(-3)
            if d[56 + j] < 13:  # ~5 %: a unit price with 4 decimals (Xero keeps 4; shows 2 unless unitdp=4)
                line["unit4"] = unit * 100 + 1 + d[60 + j] % 99
                line["unit"] = _half_up_div(line["unit4"], 100)
            lines.append(line)
        st = {
            "idx": i,
            "type": "ACCREC" if acc_rec else "ACCPAY",
            "status": status,
            "contact": int.from_bytes(d[35:38], "big") % self.n_contacts,
            "currency": currency,
            "date_day": date_day,
            "due_day": date_day + terms,
            "lat": lat,
            "lines": lines,
            "updated_ms": updated,
            "created_ms": min(updated, date_day * DAY_MS),
            "number": f"INV-{i + 1:07d}" if acc_rec else "",
            "reference": REFERENCES[d[38] % len(REFERENCES)].format(n=1000 + i, q=1 + d[39] % 4),
            "sent": acc_rec and status in ("AUTHORISED", "PAID") and d[40] < 200,
            "payments": [],
            "credit_notes": [],
            "paid": 0,
            "credited": 0,
            "fully_paid_day": None,
        }
        if not acc_rec:
            st["number"] = f"BILL-{int.from_bytes(d[41:43], 'big'):05d}" if d[43] < 200 else ""
        st["rate_micro"] = self.currency_rate_micro(currency, date_day)
        self.compute_totals(st)
        total = st["total"]
        st["_cn"] = has_cn
        if has_cn and status in ("AUTHORISED", "PAID"):
            share = 10 + d[44] % 41  # 10..50 % of the total
            st["credited"] = total * share // 100
            st["credit_notes"] = [i]
        remaining = total - st["credited"]
        if status == "PAID":
            if npay == 2:
                first = remaining * (30 + d[45] % 41) // 100
                st["payments"] = [(2 * i, first), (2 * i + 1, remaining - first)]
            else:
                st["payments"] = [(2 * i, remaining)]
            st["paid"] = remaining
            st["fully_paid_day"] = upd_day
        elif status == "AUTHORISED" and npay:
            part = remaining * (20 + d[45] % 61) // 100
            st["payments"] = [(2 * i, part)]
            st["paid"] = part
        st["payments"] = [p for p, _ in st["payments"]]
        return st

    def compute_totals(self, st: dict) -> None:
        num, den = self.tax_rate
        sub = tax = 0
        for ln in st["lines"]:
            amount = line_amount(ln)
            if ln["exempt"] or st["lat"] == "NoTax":
                t = 0
            elif st["lat"] == "Inclusive":
                t = _half_up_div(amount * num, den + num)
            else:
                t = _half_up_div(amount * num, den)
            ln["amount"], ln["tax"] = amount, t
            sub += amount
            tax += t
        if st["lat"] == "Inclusive":
            # Inclusive lines already contain their tax: Total = sum of lines, SubTotal = Total - tax.
            st["subtotal"], st["total_tax"], st["total"] = sub - tax, tax, sub
        else:
            st["subtotal"], st["total_tax"], st["total"] = sub, tax, sub + tax

    def amount_due(self, st: dict) -> int:
        if st["status"] in ("VOIDED", "DELETED"):
            return 0
        return st["total"] - st["paid"] - st["credited"]

    def currency_rate_micro(self, currency: str, day: int) -> int:
        """Units of ``currency`` per unit of base currency on ``day``, times 10**6 (1.0 for base)."""
        if currency == self.base_currency:
            return 1_000_000
        d = hashlib.blake2b(f"fx:{currency}:{day}".encode(), key=self.key, digest_size=4).digest()
        drift = (int.from_bytes(d, "big") % 6001 - 3000) / 100_000  # +-3%
        rate = REF_RATES[currency] / REF_RATES[self.base_currency] * (1 + drift)
        return round(rate * 1_000_000)

    # -- payments --------------------------------------------------------------------------------------

    def payment(self, idx: int) -> dict | None:
        got = self.overlay["Payments"].get(idx)
        if got is not None:
            return got
        if idx >= 2 * self.n_invoices:
            return None
        inv = self._base_invoice(idx // 2)
        if idx not in inv["payments"]:
            return None
        j = idx % 2
        remaining = inv["total"] - inv["credited"]
        d = self._digest("inv", idx // 2)
        if inv["status"] == "PAID":
            if len(inv["payments"]) == 2:
                first = remaining * (30 + d[45] % 41) // 100
                amount = first if j == 0 else remaining - first
            else:
                amount = remaining
        else:
            amount = remaining * (20 + d[45] % 61) // 100
        upd = self.base_updated("Payments", idx)
        pay_day = upd // DAY_MS
        if j == 0 and len(inv["payments"]) == 2:
            pay_day = max(inv["date_day"], (inv["date_day"] + pay_day) // 2)
        pay_day = max(pay_day, inv["date_day"])
        return {
            "idx": idx,
            "invoice": idx // 2,
            "amount": amount,
            "date_day": pay_day,
            "updated_ms": upd,
            "rate_micro": self.currency_rate_micro(inv["currency"], pay_day),
            "status": "AUTHORISED",
            "reference": "" if d[46] < 128 else f"Payment {idx // 2 + 1}",
            "reconciled": d[47] < 180,
            "account": "090",
        }

    # -- credit notes ----------------------------------------------------------------------------------

    def credit_note(self, idx: int) -> dict | None:
        got = self.overlay["CreditNotes"].get(idx)
        if got is not None:
            return got
        if idx >= self.n_invoices:
            return None
        inv = self._base_invoice(idx)
        if not inv.get("_cn"):
            return None
        d = self._digest("cn", idx)
        allocated = inv["credited"]
        standalone = inv["status"] not in ("AUTHORISED", "PAID")
        if standalone:
            # Not allocated to anything: a draft, submitted, voided or deleted credit note of its own.
            gross = max(100, inv["total"] * (20 + d[1] % 31) // 100)
        else:
            # Some credit notes are larger than what was allocated, leaving RemainingCredit.
            extra = 0 if d[0] < 160 else allocated * (5 + d[1] % 40) // 100
            gross = allocated + extra
        num, den = self.tax_rate
        if inv["lat"] == "NoTax":
            lat, unit = "NoTax", gross
        else:
            lat, unit = "Exclusive", _half_up_div(gross * den, den + num)
        upd = self.base_updated("CreditNotes", idx)
        st = {
            "idx": idx,
            "invoice": idx,
            "type": "ACCRECCREDIT" if inv["type"] == "ACCREC" else "ACCPAYCREDIT",
            "contact": inv["contact"],
            "currency": inv["currency"],
            "rate_micro": inv["rate_micro"],
            "date_day": upd // DAY_MS,
            "updated_ms": upd,
            "lat": lat,
            "number": f"CN-{idx + 1:07d}" if inv["type"] == "ACCREC" else "",
            "reference": f"Credit for {inv['number'] or 'bill'}",
            "lines": [
                {
                    "qty": 1,
                    "unit": unit,
                    "exempt": lat == "NoTax",
                    "account": inv["lines"][0]["account"],
                    "item": inv["lines"][0]["item"],
                    "j": 0,
                }
            ],
            "allocations": [] if standalone else [(idx, allocated, upd // DAY_MS)],
        }
        self.compute_totals(st)
        # The net amount is back-computed from the gross: nudge it so the total covers what was allocated.
        while st["total"] < gross:
            st["lines"][0]["unit"] += 1
            self.compute_totals(st)
        if standalone:
            st["status"] = inv["status"]
        else:
            st["status"] = "PAID" if st["total"] == sum(a for _, a, _ in st["allocations"]) else "AUTHORISED"
        return st

    def credit_remaining(self, st: dict) -> int:
        if st["status"] in ("VOIDED", "DELETED", "DRAFT", "SUBMITTED"):
            return st["total"] if st["status"] in ("DRAFT", "SUBMITTED") else 0
        return st["total"] - sum(a for _, a, _ in st["allocations"])

    # -- contacts --------------------------------------------------------------------------------------

    def contact(self, idx: int) -> dict | None:
        got = self.overlay["Contacts"].get(idx)
        if got is not None:
            return got
        if not 0 <= idx < self.n_contacts:
            return None
        d = self._digest("con", idx)
        first, last = FIRST[d[0] % len(FIRST)], LAST[d[1] % len(LAST)]
        is_company = d[2] < 150
        if is_company:
            name = f"{LAST[d[3] % len(LAST)]} {ORG_KINDS[d[4] % len(ORG_KINDS)]} {COMPANY_SUFFIX[d[5] % 7]}"
        else:
            name = f"{first} {last}"
        # Names are unique in Xero: suffix the index.
        name = f"{name} #{idx + 1}"
        city = CITIES[d[6] % len(CITIES)]
        return {
            "idx": idx,
            "name": name,
            "first": first,
            "last": last,
            "email": f"{first.lower()}.{last.lower()}{idx + 1}@example.com",
            "status": "ARCHIVED" if d[7] < 8 else "ACTIVE",
            "updated_ms": self.base_updated("Contacts", idx),
            "is_customer": d[8] < 200,
            "is_supplier": d[8] >= 140,
            "city": city,
            "phone": f"{d[9]:03d}-{int.from_bytes(d[10:12], 'big') % 10000:04d}",
            "account_number": f"C{idx + 1:06d}",
            "tax_number": "" if d[12] < 128 else f"{d[13]:03d}-{d[14]:03d}",
            "currency": self.base_currency,
            "company_number": f"{int.from_bytes(d[15:18], 'big') % 10_000_000:07d}" if is_company else "",
            "groups": (d[18] % len(CONTACT_GROUPS),) if d[19] < 90 else (),
        }

    # -- accounts --------------------------------------------------------------------------------------

    def accounts(self) -> list[dict]:
        out = []
        for n, (code, name, typ, cls, taxk, status, bank) in enumerate(ACCOUNTS):
            tax = {"sale": self.sale_tax, "purchase": self.purchase_tax}.get(taxk, "NONE")
            if code == "820":
                name = self.tax_label
            out.append(
                {
                    "idx": n,
                    "code": code,
                    "name": name,
                    "type": typ,
                    "class": cls,
                    "tax": tax,
                    "status": status,
                    "bank": bank,
                    "updated_ms": self.info.created_ms + n * 1000,
                    "description": ACCOUNT_DESCRIPTIONS.get(code, ""),
                }
            )
        return out

    # -- generic access --------------------------------------------------------------------------------

    def get(self, kind: str, idx: int) -> dict | None:
        return {
            "Invoices": self.invoice,
            "Contacts": self.contact,
            "Payments": self.payment,
            "CreditNotes": self.credit_note,
        }[kind](idx)

    def decode_id(self, kind: str, value: str) -> int | None:
        return self.ids.decode(ID_KINDS[kind], value)

    def encode_id(self, kind: str, idx: int) -> str:
        return self.ids.encode(ID_KINDS[kind], idx)

    def put(self, kind: str, st: dict, *, bump_ms: int | None) -> None:
        """Store a mutated/created state in the overlay; ``bump_ms`` sets a new UpdatedDateUTC."""
        idx = st["idx"]
        old = self.overlay[kind].get(idx)
        if bump_ms is None and old is not None and old.get("_moved"):
            st["_moved"] = True
        if bump_ms is not None:
            moved = self.moved[kind]
            if old is not None and old.get("_moved"):
                moved.pop(bisect_left(moved, (old["updated_ms"], idx)))
            elif self._is_base(kind, idx):
                pos = self.base_pos_of(kind, idx)
                mp = self.moved_pos[kind]
                mp.insert(bisect_left(mp, pos), pos)
            st["updated_ms"] = bump_ms
            st["_moved"] = True
            moved.insert(bisect_right(moved, (bump_ms, idx)), (bump_ms, idx))
        self.overlay[kind][idx] = st
        self.version += 1

    def _is_base(self, kind: str, idx: int) -> bool:
        if kind == "Invoices":
            return idx < self.n_invoices
        if kind == "Contacts":
            return idx < self.n_contacts
        if kind == "Payments":
            return idx < 2 * self.n_invoices
        return idx < self.n_invoices

    def new_index(self, kind: str) -> int:
        base = {
            "Invoices": self.n_invoices,
            "Contacts": self.n_contacts,
            "Payments": 2 * self.n_invoices,
            "CreditNotes": self.n_invoices,
        }[kind]
        n = base + self.created[kind]
        self.created[kind] += 1
        return n

    # -- ordered views ---------------------------------------------------------------------------------

    def ordered_count(self, kind: str, after_ms: int | None) -> int:
        k = 0 if after_ms is None else self.first_base_pos_after(kind, after_ms)
        mp = self.moved_pos[kind]
        base = self.base_count(kind) - k - (len(mp) - bisect_left(mp, k))
        moved = self.moved[kind]
        tail = len(moved) - (0 if after_ms is None else bisect_right(moved, (after_ms, 1 << 62)))
        return base + tail

    def ordered_slice(self, kind: str, after_ms: int | None, start: int, stop: int) -> list[int]:
        """Record indexes [start, stop) of the records updated after ``after_ms``, UpdatedDateUTC ascending.

        Base records (minus those moved by mutations) come first in index order, then moved/created ones,
        which always carry a later sandbox-clock time.
        """
        k = 0 if after_ms is None else self.first_base_pos_after(kind, after_ms)
        mp = self.moved_pos[kind]
        skip_from = bisect_left(mp, k)
        n_base = self.base_count(kind) - k - (len(mp) - skip_from)
        out: list[int] = []
        if start < n_base:
            # Find the base position of the start-th surviving record.
            pos = k + start
            while True:
                c = bisect_right(mp, pos) - skip_from
                nxt = k + start + c
                if nxt == pos:
                    break
                pos = nxt
            e = bisect_left(mp, pos)
            total_base = self.base_count(kind)
            while len(out) < stop - start and pos < total_base:
                if e < len(mp) and mp[e] == pos:
                    e += 1
                else:
                    out.append(self.base_idx_at(kind, pos))
                pos += 1
        if len(out) < stop - start:
            moved = self.moved[kind]
            m0 = 0 if after_ms is None else bisect_right(moved, (after_ms, 1 << 62))
            a = m0 + max(0, start - n_base)
            b = m0 + (stop - n_base)
            out.extend(idx for _, idx in moved[a:b])
        return out


ID_KINDS = {
    "Invoices": "I",
    "Contacts": "C",
    "Payments": "P",
    "CreditNotes": "N",
    "Accounts": "A",
    "LineItems": "L",
    "Allocations": "X",
    "History": "H",
}
