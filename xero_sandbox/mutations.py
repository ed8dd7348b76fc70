"""Run-time changes to a tenant's data (create, edit, pay, void, delete...), as a user in Xero would make.

Every change is validated the way Xero validates it (you cannot void a paid invoice or delete an
authorised one), stamps the sandbox clock's time on ``UpdatedDateUTC`` (except ``silent`` edits, which
mimic the changes Xero makes without bumping it), records history and emits webhook events.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from . import serialise
from .data import DAY_MS, ITEMS, PURCHASE_ACCOUNTS, SALE_ACCOUNTS, TenantData
from .query import ValidationError

if TYPE_CHECKING:
    from .core import Sandbox

ACTIONS = (
    "create_invoice",
    "edit_invoice",
    "pay_invoice",
    "void_invoice",
    "delete_invoice",
    "delete_payment",
    "create_credit_note",
    "create_contact",
    "edit_contact",
    "archive_contact",
    "random",
    "batch",
)


def _cents(value: Any, what: str) -> int:
    try:
        d = Decimal(str(value))
    except (InvalidOperation, ValueError) as exc:
        raise ValidationError(f"{what} must be a decimal amount") from exc
    if d != d.quantize(Decimal("0.01")):
        raise ValidationError(f"{what} must have at most 2 decimal places")
    return int(d * 100)


def _qty_unit(ln: dict) -> dict:
    """Quantity (up to 4 dp, > 0) and UnitAmount (up to 4 dp) of a line, as the generator stores them."""
    try:
        qty = Decimal(str(ln.get("quantity", 1)))
        unit = Decimal(str(ln.get("unit_amount", "0")))
    except (InvalidOperation, ValueError) as exc:
        raise ValidationError("Quantity and UnitAmount must be decimal numbers") from exc
    if not qty.is_finite() or qty <= 0 or qty != qty.quantize(Decimal("0.0001")):
        raise ValidationError("Quantity must be positive, with at most 4 decimal places")
    if not unit.is_finite() or unit != unit.quantize(Decimal("0.0001")):
        raise ValidationError("UnitAmount must have at most 4 decimal places")
    out: dict = {"qty": int(qty) if qty == qty.to_integral_value() else qty.normalize()}
    if unit == unit.quantize(Decimal("0.01")):
        out["unit"] = int(unit * 100)
    else:
        out["unit4"] = int(unit * 10_000)
        out["unit"] = int((unit * 100).quantize(Decimal(1), rounding=ROUND_HALF_UP))
    return out


def _day(value: str | None, default: int) -> int:
    if not value:
        return default
    from datetime import UTC, datetime

    try:
        dt = datetime.fromisoformat(value[:10]).replace(tzinfo=UTC)
    except ValueError as exc:
        raise ValidationError(f"'{value}' is not a valid date (YYYY-MM-DD)") from exc
    return int(dt.timestamp()) // 86400


class Mutator:
    def __init__(self, sb: Sandbox) -> None:
        self.sb = sb
        self._last_ms = 0
        self._batch_ms: int | None = None  # set while a batch runs: its changes share one UpdatedDateUTC

    def apply(self, tenant_id: str, action: str, **kw: Any) -> dict:
        if action not in ACTIONS:
            raise ValidationError(f"unknown mutation {action!r}; expected one of {', '.join(ACTIONS)}")
        t = self.sb.tenant(tenant_id)
        with self.sb.data_lock:
            return getattr(self, action)(t, **kw)

    # -- helpers ---------------------------------------------------------------------------------------

    def _now(self) -> int:
        # Separate changes get strictly increasing times, so their order is well defined; the changes of
        # one batch (``random``, ``batch``) share a single UpdatedDateUTC, as a bulk save in Xero does, so
        # a client that asks for "strictly after the last timestamp I saw" must overlap and de-duplicate.
        if self._batch_ms is not None:
            return self._batch_ms
        now = max(self.sb.clock.now_ms(), self._last_ms + 1)
        self._last_ms = now
        return now

    @contextmanager
    def _batch(self) -> Iterator[int]:
        if self._batch_ms is not None:  # nested: part of the outer batch
            yield self._batch_ms
            return
        self._batch_ms = self._now()
        try:
            yield self._batch_ms
        finally:
            self._batch_ms = None

    def _find(self, t: TenantData, kind: str, value: str | None) -> dict:
        idx = t.decode_id(kind, value or "")
        st = t.get(kind, idx) if idx is not None else None
        if st is None:
            raise ValidationError(f"{kind[:-1]} {value!r} not found in tenant {t.info.tenant_id}")
        return copy.deepcopy(st)

    def _history(self, t: TenantData, kind: str, idx: int, change: str, details: str, ms: int) -> None:
        t.history.setdefault((kind, idx), []).append(
            {
                "Changes": change,
                "DateUTCString": serialise.iso_seconds(ms),
                "DateUTC": serialise.net_date(ms),
                "User": self.sb.cfg.users[0].given_name + " " + self.sb.cfg.users[0].family_name,
                "Details": details,
            }
        )

    def _emit(self, t: TenantData, kind: str, idx: int, event: str) -> None:
        self.sb.webhooks.emit(t.info.tenant_id, kind, t.encode_id(kind, idx), event)

    def _out(self, t: TenantData, kind: str, st: dict) -> dict:
        return self.sb.serialise(t, kind, st, full=True)

    # -- invoices --------------------------------------------------------------------------------------

    def create_invoice(
        self,
        t: TenantData,
        contact_id: str | None = None,
        type: str = "ACCREC",
        status: str = "AUTHORISED",
        currency: str | None = None,
        lines: list[dict] | None = None,
        reference: str = "",
        date: str | None = None,
        due_date: str | None = None,
        line_amount_types: str = "Exclusive",
    ) -> dict:
        if type not in ("ACCREC", "ACCPAY"):
            raise ValidationError("Type must be ACCREC or ACCPAY")
        if status not in ("DRAFT", "SUBMITTED", "AUTHORISED"):
            raise ValidationError("A new invoice must be DRAFT, SUBMITTED or AUTHORISED")
        if line_amount_types not in ("Exclusive", "Inclusive", "NoTax"):
            raise ValidationError("LineAmountTypes must be Exclusive, Inclusive or NoTax")
        currency = currency or t.base_currency
        if currency != t.base_currency and currency not in t.foreign:
            raise ValidationError(f"Currency {currency} is not enabled for this organisation")
        idx = t.new_index("Invoices")
        now = self._now()
        if contact_id:
            contact = t.decode_id("Contacts", contact_id)
            if contact is None or t.contact(contact) is None:
                raise ValidationError(f"Contact {contact_id!r} not found")
        else:
            contact = idx % t.n_contacts
        rng = random.Random(f"{t.info.tenant_id}:{idx}")
        accounts = SALE_ACCOUNTS if type == "ACCREC" else PURCHASE_ACCOUNTS
        if not lines:
            lines = [
                {
                    "description": ITEMS[rng.randrange(len(ITEMS))],
                    "quantity": rng.randint(1, 5),
                    "unit_amount": f"{rng.randint(2000, 90000) / 100:.2f}",
                }
            ]
        state_lines = []
        for j, ln in enumerate(lines):
            state_lines.append(
                {
                    **_qty_unit(ln),
                    "exempt": bool(ln.get("tax_exempt", False)) or line_amount_types == "NoTax",
                    "account": str(ln.get("account_code", accounts[0])),
                    "item": j % len(ITEMS),
                    "j": j,
                    "description": ln.get("description"),
                }
            )
        day = _day(date, now // DAY_MS)
        st = {
            "idx": idx,
            "type": type,
            "status": status,
            "contact": contact,
            "currency": currency,
            "date_day": day,
            "due_day": _day(due_date, day + 14),
            "lat": line_amount_types,
            "lines": state_lines,
            "updated_ms": now,
            "created_ms": now,
            "number": f"INV-{idx + 1:07d}" if type == "ACCREC" else "",
            "reference": reference,
            "sent": False,
            "payments": [],
            "credit_notes": [],
            "paid": 0,
            "credited": 0,
            "fully_paid_day": None,
            "rate_micro": t.currency_rate_micro(currency, day),
        }
        t.compute_totals(st)
        t.put("Invoices", st, bump_ms=now)
        self._history(
            t, "Invoices", idx, "Created", f"INV {st['number']} to contact, total {st['total'] / 100}", now
        )
        self._emit(t, "Invoices", idx, "CREATE")
        return self._out(t, "Invoices", st)

    def edit_invoice(
        self,
        t: TenantData,
        invoice_id: str,
        reference: str | None = None,
        due_date: str | None = None,
        status: str | None = None,
        lines: list[dict] | None = None,
        silent: bool = False,
        account_code: str | None = None,
    ) -> dict:
        st = self._find(t, "Invoices", invoice_id)
        if st["status"] in ("VOIDED", "DELETED"):
            raise ValidationError(f"This document cannot be edited as it has a status of {st['status']}")
        changes = []
        if reference is not None:
            st["reference"] = reference
            changes.append("reference")
        if due_date is not None:
            st["due_day"] = _day(due_date, st["due_day"])
            changes.append("due date")
        if account_code is not None:
            # Xero does not bump UpdatedDateUTC for a line's account code: make this one silent by default.
            for ln in st["lines"]:
                ln["account"] = str(account_code)
            changes.append("account code")
            silent = (
                True if (reference is None and due_date is None and status is None and not lines) else silent
            )
        if status is not None:
            order = ["DRAFT", "SUBMITTED", "AUTHORISED"]
            if (
                status not in order
                or st["status"] not in order
                or order.index(status) < order.index(st["status"])
            ):
                raise ValidationError(f"Cannot change status from {st['status']} to {status}")
            st["status"] = status
            changes.append(f"status {status}")
        if lines:
            if st["paid"] or st["credited"]:
                raise ValidationError("Line items cannot be edited on an invoice with payments or credit")
            st["lines"] = [
                {
                    **_qty_unit(ln),
                    "exempt": bool(ln.get("tax_exempt", False)),
                    "account": str(ln.get("account_code", "200")),
                    "item": j % len(ITEMS),
                    "j": j,
                    "description": ln.get("description"),
                }
                for j, ln in enumerate(lines)
            ]
            t.compute_totals(st)
            changes.append("lines")
        now = self._now()
        t.put("Invoices", st, bump_ms=None if silent else now)
        self._history(t, "Invoices", st["idx"], "Edited", ", ".join(changes) or "no change", now)
        if not silent:
            self._emit(t, "Invoices", st["idx"], "UPDATE")
        return self._out(t, "Invoices", st)

    def pay_invoice(
        self, t: TenantData, invoice_id: str, amount: Any = None, date: str | None = None, reference: str = ""
    ) -> dict:
        st = self._find(t, "Invoices", invoice_id)
        if st["status"] != "AUTHORISED":
            raise ValidationError("Payments can only be made against AUTHORISED invoices")
        due = t.amount_due(st)
        cents = due if amount is None else _cents(amount, "Amount")
        if cents <= 0 or cents > due:
            raise ValidationError(f"Payment amount must be between 0.01 and the amount due {due / 100:.2f}")
        now = self._now()
        pidx = t.new_index("Payments")
        day = _day(date, now // DAY_MS)
        pay = {
            "idx": pidx,
            "invoice": st["idx"],
            "amount": cents,
            "date_day": day,
            "updated_ms": now,
            "rate_micro": t.currency_rate_micro(st["currency"], day),
            "status": "AUTHORISED",
            "reference": reference,
            "reconciled": False,
            "account": "090",
        }
        t.put("Payments", pay, bump_ms=now)
        st["payments"] = list(st["payments"]) + [pidx]
        st["paid"] += cents
        if t.amount_due(st) == 0:
            st["status"] = "PAID"
            st["fully_paid_day"] = day
        t.put("Invoices", st, bump_ms=now)
        self._history(t, "Invoices", st["idx"], "Paid", f"Payment received of {cents / 100:.2f}", now)
        self._emit(t, "Invoices", st["idx"], "UPDATE")
        return {"Invoice": self._out(t, "Invoices", st), "Payment": self._out(t, "Payments", pay)}

    def delete_payment(self, t: TenantData, payment_id: str) -> dict:
        pay = self._find(t, "Payments", payment_id)
        if pay["status"] == "DELETED":
            raise ValidationError("Payment already deleted")
        inv = copy.deepcopy(t.invoice(pay["invoice"]))
        now = self._now()
        pay["status"] = "DELETED"
        t.put("Payments", pay, bump_ms=now)
        inv["paid"] -= pay["amount"]
        if inv["status"] == "PAID":
            inv["status"] = "AUTHORISED"
            inv["fully_paid_day"] = None
        t.put("Invoices", inv, bump_ms=now)
        self._history(t, "Invoices", inv["idx"], "Payment deleted", f"{pay['amount'] / 100:.2f}", now)
        self._emit(t, "Invoices", inv["idx"], "UPDATE")
        return {"Invoice": self._out(t, "Invoices", inv), "Payment": self._out(t, "Payments", pay)}

    def void_invoice(self, t: TenantData, invoice_id: str) -> dict:
        st = self._find(t, "Invoices", invoice_id)
        if st["status"] not in ("AUTHORISED", "SUBMITTED", "DRAFT"):
            raise ValidationError(f"Invoice not of valid status for voiding ({st['status']})")
        if st["paid"] or st["credited"]:
            raise ValidationError("This document cannot be voided as it has payments or credit allocated")
        if st["status"] != "AUTHORISED":
            raise ValidationError("Only AUTHORISED invoices can be voided; delete a DRAFT or SUBMITTED one")
        return self._set_status(t, st, "VOIDED")

    def delete_invoice(self, t: TenantData, invoice_id: str) -> dict:
        st = self._find(t, "Invoices", invoice_id)
        if st["status"] not in ("DRAFT", "SUBMITTED"):
            raise ValidationError(
                f"Only DRAFT or SUBMITTED invoices can be deleted (this one is {st['status']})"
            )
        return self._set_status(t, st, "DELETED")

    def _set_status(self, t: TenantData, st: dict, status: str) -> dict:
        now = self._now()
        st["status"] = status
        t.put("Invoices", st, bump_ms=now)
        self._history(t, "Invoices", st["idx"], status.title(), f"Invoice {status.lower()}", now)
        self._emit(t, "Invoices", st["idx"], "UPDATE")
        return self._out(t, "Invoices", st)

    # -- credit notes ----------------------------------------------------------------------------------

    def create_credit_note(self, t: TenantData, invoice_id: str, amount: Any = None) -> dict:
        inv = self._find(t, "Invoices", invoice_id)
        if inv["status"] != "AUTHORISED":
            raise ValidationError("Credit can only be allocated to AUTHORISED invoices")
        due = t.amount_due(inv)
        cents = due if amount is None else _cents(amount, "Amount")
        if cents <= 0 or cents > due:
            raise ValidationError("Credit amount must be between 0.01 and the amount due")
        now = self._now()
        cidx = t.new_index("CreditNotes")
        day = now // DAY_MS
        cn = {
            "idx": cidx,
            "invoice": inv["idx"],
            "type": "ACCRECCREDIT" if inv["type"] == "ACCREC" else "ACCPAYCREDIT",
            "contact": inv["contact"],
            "currency": inv["currency"],
            "rate_micro": inv["rate_micro"],
            "date_day": day,
            "updated_ms": now,
            "lat": "NoTax",
            "number": f"CN-{cidx + 1:07d}",
            "reference": f"Credit for {inv['number']}",
            "lines": [
                {
                    "qty": 1,
                    "unit": cents,
                    "exempt": True,
                    "account": inv["lines"][0]["account"],
                    "item": 0,
                    "j": 0,
                    "description": "Credit",
                }
            ],
            "allocations": [(inv["idx"], cents, day)],
            "status": "PAID",
        }
        t.compute_totals(cn)
        t.put("CreditNotes", cn, bump_ms=now)
        inv["credit_notes"] = list(inv["credit_notes"]) + [cidx]
        inv["credited"] += cents
        if t.amount_due(inv) == 0:
            inv["status"] = "PAID"
            inv["fully_paid_day"] = day
        t.put("Invoices", inv, bump_ms=now)
        self._history(t, "Invoices", inv["idx"], "Credit applied", f"{cents / 100:.2f}", now)
        self._emit(t, "CreditNotes", cidx, "CREATE")
        self._emit(t, "Invoices", inv["idx"], "UPDATE")
        return {"Invoice": self._out(t, "Invoices", inv), "CreditNote": self._out(t, "CreditNotes", cn)}

    # -- contacts --------------------------------------------------------------------------------------

    def create_contact(
        self, t: TenantData, name: str, email: str | None = None, first_name: str = "", last_name: str = ""
    ) -> dict:
        if not name:
            raise ValidationError("The contact name must be specified")
        with self.sb.data_lock:
            for st in self.sb.iter_states(t, "Contacts"):
                if st["name"] == name:
                    raise ValidationError(
                        f"The contact name {name} is already assigned to another contact. "
                        "The contact name must be unique across all active contacts."
                    )
        idx = t.new_index("Contacts")
        now = self._now()
        st = {
            "idx": idx,
            "name": name,
            "first": first_name,
            "last": last_name,
            "email": email or "",
            "status": "ACTIVE",
            "updated_ms": now,
            "is_customer": False,
            "is_supplier": False,
            "city": ("Auckland", "AKL", "1010"),
            "phone": "",
            "account_number": f"C{idx + 1:06d}",
            "tax_number": "",
            "currency": t.base_currency,
        }
        t.put("Contacts", st, bump_ms=now)
        self._emit(t, "Contacts", idx, "CREATE")
        return self._out(t, "Contacts", st)

    def edit_contact(
        self,
        t: TenantData,
        contact_id: str,
        name: str | None = None,
        email: str | None = None,
        silent: bool = False,
    ) -> dict:
        st = self._find(t, "Contacts", contact_id)
        if name is not None:
            st["name"] = name
        if email is not None:
            st["email"] = email
        t.put("Contacts", st, bump_ms=None if silent else self._now())
        if not silent:
            self._emit(t, "Contacts", st["idx"], "UPDATE")
        return self._out(t, "Contacts", st)

    def archive_contact(self, t: TenantData, contact_id: str) -> dict:
        st = self._find(t, "Contacts", contact_id)
        st["status"] = "ARCHIVED"
        t.put("Contacts", st, bump_ms=self._now())
        self._emit(t, "Contacts", st["idx"], "UPDATE")
        return self._out(t, "Contacts", st)

    # -- a burst of plausible activity -----------------------------------------------------------------

    def batch(self, t: TenantData, mutations: list[dict] | None = None) -> dict:
        """Several mutations ``[{"action": …, …}]`` applied as one save: they share one UpdatedDateUTC."""
        ok = isinstance(mutations, list) and all(isinstance(m, dict) and "action" in m for m in mutations)
        if not ok or not mutations:
            raise ValidationError('batch needs "mutations": [{"action": ..., ...}, ...]')
        for m in mutations:
            if m["action"] not in ACTIONS or m["action"] == "batch":
                raise ValidationError(f"unknown mutation {m['action']!r} in batch")
        results = []
        with self._batch():
            for m in mutations:
                kw = {k: v for k, v in m.items() if k != "action"}
                results.append(getattr(self, m["action"])(t, **kw))
        return {"applied": results}

    def random(self, t: TenantData, count: int = 10, seed: int = 0) -> dict:
        """``count`` plausible changes (new invoices, payments, voids, deletes, edits) by seed, one batch."""
        with self._batch():
            return self._random(t, count, seed)

    def _random(self, t: TenantData, count: int, seed: int) -> dict:
        rng = random.Random(f"{t.info.tenant_id}:{seed}:{t.version}")
        done: list[dict] = []
        attempts = 0
        n_total = t.n_invoices + t.created["Invoices"]
        while len(done) < count and attempts < count * 20:
            attempts += 1
            roll = rng.random()
            try:
                if roll < 0.3 or n_total == 0:
                    out = self.create_invoice(t, status=rng.choice(["DRAFT", "AUTHORISED", "AUTHORISED"]))
                    done.append({"action": "create_invoice", "id": out["InvoiceID"]})
                    n_total += 1
                    continue
                idx = rng.randrange(n_total)
                st = t.invoice(idx)
                if st is None:
                    continue
                iid = t.encode_id("Invoices", idx)
                if st["status"] == "AUTHORISED" and roll < 0.65:
                    self.pay_invoice(t, iid)
                    done.append({"action": "pay_invoice", "id": iid})
                elif st["status"] == "AUTHORISED" and roll < 0.75 and not st["paid"] and not st["credited"]:
                    self.void_invoice(t, iid)
                    done.append({"action": "void_invoice", "id": iid})
                elif st["status"] in ("DRAFT", "SUBMITTED") and roll < 0.85:
                    self.delete_invoice(t, iid)
                    done.append({"action": "delete_invoice", "id": iid})
                elif st["status"] not in ("VOIDED", "DELETED"):
                    self.edit_invoice(t, iid, reference=f"Edited {rng.randrange(10_000)}")
                    done.append({"action": "edit_invoice", "id": iid})
            except ValidationError:
                continue
        return {"applied": done}
