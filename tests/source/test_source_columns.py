"""A page typed into an Arrow table (xero_source/columns.py): what each kind of Xero value becomes."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pyarrow as pa

from xero_source import ENDPOINTS
from xero_source.client import parse_body
from xero_source.columns import page_table

INVOICES = ENDPOINTS["invoices"]


def typed(records: list[dict]):
    return page_table(records, "tenant-1", INVOICES.id_field, INVOICES.versioned, INVOICES.columns)


def invoice(**fields) -> dict:
    return {"InvoiceID": "a1", "UpdatedDateUTC": "/Date(1700000000000+0000)/", **fields}


def test_amounts_are_the_exact_decimals_xero_sent():
    body = (b'{"Invoices": [{"InvoiceID": "a1", "UpdatedDateUTC": "/Date(1700000000000+0000)/", '
            b'"Total": 148062.76, "SubTotal": 9999999999999.99, "TotalTax": 0.1, "AmountDue": 46, '
            b'"CurrencyRate": 0.1234567891}]}')
    page = typed(parse_body(body)["Invoices"])
    row = page.table.to_pylist()[0]
    assert page.table.schema.field("total").type == pa.decimal128(19, 6)
    assert row["total"] == Decimal("148062.76") and row["sub_total"] == Decimal("9999999999999.99")
    assert row["total_tax"] == Decimal("0.1") and row["amount_due"] == Decimal(46)
    assert row["currency_rate"] == Decimal("0.1234567891")  # numeric(28,10): all ten places


def test_a_number_longer_than_a_double_is_not_rounded():
    body = (b'{"Invoices": [{"InvoiceID": "a1", "UpdatedDateUTC": "/Date(1700000000000)/", '
            b'"Total": 12.5, "LineItems": [{"UnitAmount": 0.12345678901234567, "Quantity": 2.5}]}]}')
    [record] = parse_body(body)["Invoices"]
    assert record["LineItems"][0]["UnitAmount"] == Decimal("0.12345678901234567")  # as a double: ...566
    row = typed([record]).table.to_pylist()[0]
    assert row["total"] == Decimal("12.5")
    # In JSON, a number a double would round stays its digits (as text); the others stay numbers.
    assert row["line_items"] == '[{"UnitAmount":"0.12345678901234567","Quantity":2.5}]'


def test_more_decimal_places_than_the_column_keeps_round_as_postgresql_does():
    row = typed([invoice(Total=0.1 + 0.2, SubTotal=2.0000005, TotalTax=-2.0000005)]).table.to_pylist()[0]
    assert (row["total"], row["sub_total"], row["total_tax"]) == (
        Decimal("0.3"), Decimal("2.000001"), Decimal("-2.000001"))


def test_dates_become_utc_timestamps():
    page = typed([invoice(Date="/Date(1539993600000+0000)/", DueDate="2018-10-20T00:00:00",
                          FullyPaidOnDate="2018-10-20T10:00:00+10:00")])
    row = page.table.to_pylist()[0]
    assert row["date"] == datetime(2018, 10, 20, tzinfo=UTC)
    assert row["due_date"] == datetime(2018, 10, 20, tzinfo=UTC)  # no offset: UTC
    assert row["fully_paid_on_date"] == datetime(2018, 10, 20, tzinfo=UTC)
    assert row["updated_date_utc"] == datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)


def test_undeclared_date_fields_are_inferred_as_timestamps_whatever_their_form():
    page = typed([invoice(UpdatedDateUTCString="2018-10-20T10:00:00Z", DateString="2018-10-20T00:00:00",
                          Mixed="2018-10-20T10:00:00+10:00", Label="2018-10-20T00:00:00"),
                  invoice(InvoiceID="a2", UpdatedDateUTCString="2018-10-21T00:00:00.5Z",
                          DateString=None, Mixed="2018-10-21T00:00:00", Label="2018-10-21T00:00:00 or so")])
    rows = page.table.to_pylist()
    utc = datetime(2018, 10, 20, 10, tzinfo=UTC)
    assert [r["updated_date_utc_string"] for r in rows] == [utc, datetime(2018, 10, 21, 0, 0, 0, 500000, UTC)]
    assert [r["date_string"] for r in rows] == [datetime(2018, 10, 20, tzinfo=UTC), None]
    # With and without an offset in one column: each value as it says (no offset: UTC).
    assert [r["mixed"] for r in rows] == [datetime(2018, 10, 20, tzinfo=UTC),
                                          datetime(2018, 10, 21, tzinfo=UTC)]
    assert page.table.schema.field("label").type == pa.string()  # one value is no date: text
    assert not page.problems


def test_empty_text_stays_empty_and_missing_fields_are_null():
    page = typed([invoice(Reference="", InvoiceNumber="INV-1"), invoice(InvoiceID="a2", InvoiceNumber=None)])
    rows = page.table.to_pylist()
    assert rows[0]["reference"] == "" and rows[1]["reference"] is None
    assert [r["invoice_number"] for r in rows] == ["INV-1", None]


def test_nested_objects_are_json_as_sent_and_new_ones_are_declared_json():
    lines = [{"Description": "Coaching", "UnitAmount": 1234.5678, "Quantity": 1, "Tracking": []}]
    page = typed([invoice(LineItems=lines, Warnings=[{"Message": "x"}])])
    row = page.table.to_pylist()[0]
    assert row["line_items"] == (
        '[{"Description":"Coaching","UnitAmount":1234.5678,"Quantity":1,"Tracking":[]}]')
    assert page.hints == {"warnings": {"data_type": "json"}}  # a field no hint declares, typed as JSON


def test_a_record_that_cannot_be_typed_is_left_out_with_every_reason():
    bad = invoice(InvoiceID="a2", Total="twelve", Date="/Date(soon)/")
    page = typed([invoice(), bad, invoice(InvoiceID="a3")])
    assert page.kept == [0, 2]
    # In the order of the record's fields.
    assert page.problems == {1: ["Total 'twelve' is not a number", "Date '/Date(soon)/' is not a date"]}
    assert page.table.column("invoice_id").to_pylist() == ["a1", "a3"]
