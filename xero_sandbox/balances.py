"""Contacts' ``Balances``: what their AUTHORISED invoices (AR) and bills (AP) leave outstanding and overdue.

Exact at any size without holding a tenant's invoices: one scan of the generated invoices keeps, per
contact, the outstanding amounts and what is overdue for good (due before the day of the scan: the sandbox
clock never goes back), plus the few invoices due later, sorted by due day. Run-time changes (the overlay)
are applied on top: each changed generated invoice swaps its generated contribution for its current one.
"""

from __future__ import annotations

from bisect import bisect_left

from .data import TenantData

Balances = tuple[int, int, int, int]  # cents: AR outstanding, AR overdue, AP outstanding, AP overdue


def _contribution(t: TenantData, st: dict) -> tuple[int, int, int, int] | None:
    """(contact, column: 0 AR / 2 AP, amount due, due day) of an invoice; None if it owes nothing."""
    if st["status"] != "AUTHORISED":
        return None
    return st["contact"], 0 if st["type"] == "ACCREC" else 2, t.amount_due(st), st["due_day"]


class ContactBalances:
    def __init__(self, t: TenantData, today: int) -> None:
        self.t = t
        self.since = today  # invoices due before this day are overdue whatever the clock does next
        self.base: dict[int, list[int]] = {}
        later: list[tuple[int, int, int, int]] = []
        for i in range(t.n_invoices):
            if t.base_invoice_status(i) != "AUTHORISED":  # cheap: no full generation for the other 75 %
                continue
            c = _contribution(t, t.generate_invoice(i))
            assert c is not None
            contact, off, due, due_day = c
            row = self.base.setdefault(contact, [0, 0, 0, 0])
            row[off] += due
            if due_day < today:
                row[off + 1] += due
            else:
                later.append((due_day, contact, off, due))
        later.sort()
        self.later_days = [d for d, *_ in later]
        self.later = [rest for _, *rest in later]
        self._day: tuple[int, dict[int, list[int]]] | None = None

    def _generated(self, today: int) -> dict[int, list[int]]:
        """The generated invoices' balances on ``today`` (cached for the day)."""
        if self._day is None or self._day[0] != today:
            acc = {c: list(v) for c, v in self.base.items()}
            for contact, off, due in self.later[: bisect_left(self.later_days, today)]:
                acc[contact][off + 1] += due
            self._day = (today, acc)
        return self._day[1]

    def on(self, today: int) -> dict[int, Balances]:
        today = max(today, self.since)
        acc = {c: list(v) for c, v in self._generated(today).items()}

        def apply(st: dict, sign: int) -> None:
            c = _contribution(self.t, st)
            if c is None:
                return
            contact, off, due, due_day = c
            row = acc.setdefault(contact, [0, 0, 0, 0])
            row[off] += sign * due
            if due_day < today:
                row[off + 1] += sign * due

        for idx, st in self.t.overlay["Invoices"].items():
            if idx < self.t.n_invoices:
                apply(self.t.generate_invoice(idx), -1)  # what the scan counted for it
            apply(st, +1)
        return {c: (v[0], v[1], v[2], v[3]) for c, v in acc.items()}
