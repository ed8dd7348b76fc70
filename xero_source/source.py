"""The `@dlt.source` and its resources, one per Xero endpoint."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import dlt
from dlt.common.normalizers.naming.snake_case import NamingConvention
from dlt.sources import DltResource

from xero_source.client import EndpointStats, TokenProvider, TokenRejected, XeroClient, parse_net_date
from xero_source.settings import SourceSettings

log = logging.getLogger(__name__)

DECIMAL = {"data_type": "decimal", "precision": 19, "scale": 6}
# Xero's CurrencyRate carries up to 10 decimal places: keep every one, base-currency figures depend on it.
RATE = {"data_type": "decimal", "precision": 28, "scale": 10}


def _columns(amounts: tuple[str, ...] = (), text: tuple[str, ...] = (), timestamps: tuple[str, ...] = (),
             json: tuple[str, ...] = (), flags: tuple[str, ...] = (),
             integers: tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
    """Column hints (normalised names). Money is numeric, never float. Every column the dbt staging
    models read is declared, because Xero leaves empty fields out and dlt only creates a column
    once a record carries it."""
    cols: dict[str, dict[str, Any]] = {c: dict(RATE if c == "currency_rate" else DECIMAL) for c in amounts}
    cols.update({c: {"data_type": "text"} for c in text})
    cols.update({c: {"data_type": "timestamp"} for c in timestamps})
    cols.update({c: {"data_type": "json"} for c in json})
    cols.update({c: {"data_type": "bool"} for c in flags})
    cols.update({c: {"data_type": "bigint"} for c in integers})
    return cols


@dataclass(frozen=True)
class Endpoint:
    """How one Xero collection is fetched and keyed."""

    path: str  # e.g. "Invoices"
    id_field: str  # e.g. "InvoiceID"
    paged: bool = True
    collection: str = ""  # the response's list, when not named like the path ("Organisations")
    versioned: bool = True  # records carry UpdatedDateUTC: one raw row per version, If-Modified-Since
    params: dict[str, Any] = field(default_factory=dict)
    columns: dict[str, dict[str, Any]] = field(default_factory=dict)


ENDPOINTS: dict[str, Endpoint] = {
    "invoices": Endpoint(
        "Invoices", "InvoiceID",
        columns=_columns(
            amounts=("sub_total", "total_tax", "total", "total_discount", "amount_due", "amount_paid",
                     "amount_credited", "currency_rate"),
            text=("invoice_number", "type", "status", "reference", "currency_code"),
            timestamps=("date", "due_date", "fully_paid_on_date"),
            json=("contact", "line_items"),
        ),
    ),
    "contacts": Endpoint(
        # Archived contacts are how Xero shows a contact's removal: ask for them too.
        "Contacts", "ContactID", params={"includeArchived": "true"},
        columns=_columns(
            text=("name", "contact_status", "email_address", "default_currency", "account_number"),
            flags=("is_customer", "is_supplier"),
        ),
    ),
    "payments": Endpoint(
        "Payments", "PaymentID",
        columns=_columns(
            amounts=("amount", "bank_amount", "currency_rate"),
            text=("payment_type", "status", "reference"),
            timestamps=("date",),
            json=("invoice", "credit_note", "account"),
            flags=("is_reconciled",),
        ),
    ),
    "credit_notes": Endpoint(
        "CreditNotes", "CreditNoteID",
        columns=_columns(
            amounts=("sub_total", "total_tax", "total", "remaining_credit", "currency_rate"),
            text=("credit_note_number", "type", "status", "reference", "currency_code"),
            timestamps=("date", "fully_paid_on_date"),
            json=("contact", "allocations", "line_items"),
        ),
    ),
    "accounts": Endpoint(
        "Accounts", "AccountID", paged=False,
        columns=_columns(
            text=("code", "name", "status", "type", "class", "tax_type", "currency_code"),
        ),
    ),
    # The organisation itself (base currency, time zone, financial year end): one record, no
    # UpdatedDateUTC and no If-Modified-Since, so one call per run keeps its latest state.
    "organisation": Endpoint(
        "Organisation", "OrganisationID", paged=False, collection="Organisations", versioned=False,
        columns=_columns(
            text=("name", "legal_name", "base_currency", "country_code", "timezone", "organisation_status",
                  "short_code"),
            integers=("financial_year_end_day", "financial_year_end_month"),
        ),
    ),
}

DEFAULT_RESOURCES: tuple[str, ...] = tuple(ENDPOINTS)

# A record that cannot be typed is kept here, as sent, with the reason; the rest of its page loads.
# One row per record (its latest bad version); its next clean version removes the row, in the same
# load that brings that version (`cleared`, dlt's hard delete).
QUARANTINE_TABLE = "quarantine"
QUARANTINE_HINTS = dlt.mark.make_hints(
    table_name=QUARANTINE_TABLE,
    write_disposition={"disposition": "merge", "strategy": "upsert"},
    primary_key=("tenant_id", "endpoint", "record_key"),
    columns={
        "tenant_id": {"data_type": "text", "nullable": False},
        "endpoint": {"data_type": "text", "nullable": False},
        "record_key": {"data_type": "text", "nullable": False},  # the record's id, else a hash of it
        "record_id": {"data_type": "text"},
        "updated_date_utc": {"data_type": "text"},  # as sent: it may be what is wrong
        "reason": {"data_type": "text"},
        "payload": {"data_type": "json"},
        "quarantined_at": {"data_type": "timestamp"},
        "cleared": {"data_type": "bool", "hard_delete": True},
    },
)
_NAMING = NamingConvention()
# Magnitudes the raw columns hold: numeric(19,6), and numeric(28,10) for rates.
_DECIMAL_LIMIT = {19: Decimal(10) ** 13, 28: Decimal(10) ** 18}


@functools.cache
def _snake(key: str) -> str:
    """dlt's column name for a Xero field (a record's few dozen keys: cached)."""
    return _NAMING.normalize_identifier(key)


def _is_date(value: Any) -> bool:
    if isinstance(value, datetime):
        return True
    if not isinstance(value, str):
        return False
    if value.startswith("/Date("):
        return parse_net_date(value) is not None
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


def record_problems(record: dict[str, Any], endpoint: Endpoint) -> list[str]:
    """Why `record` cannot be typed as the raw table's columns say, or [] when it can."""
    problems = []
    record_id = record.get(endpoint.id_field)
    if not isinstance(record_id, str) or not record_id:
        problems.append(f"{endpoint.id_field} is missing")
    if endpoint.versioned and not _is_date(record.get("UpdatedDateUTC")):
        problems.append(f"UpdatedDateUTC {record.get('UpdatedDateUTC')!r} is not a date")
    for key, value in record.items():
        column = endpoint.columns.get(_snake(key))
        if column is None or value is None:
            continue
        kind = column["data_type"]
        if kind == "timestamp" and not _is_date(value):
            problems.append(f"{key} {value!r} is not a date")
        elif kind == "decimal":
            if isinstance(value, bool) or not isinstance(value, Decimal | int):
                problems.append(f"{key} {value!r} is not a number")
            elif abs(value) >= _DECIMAL_LIMIT[column["precision"]]:
                problems.append(f"{key} {value} is out of range")
        elif kind == "bool" and not isinstance(value, bool):
            problems.append(f"{key} {value!r} is not true or false")
        elif kind == "bigint" and (isinstance(value, bool) or not isinstance(value, int)):
            problems.append(f"{key} {value!r} is not a whole number")
    return problems


def _record_key(record: dict[str, Any], endpoint: Endpoint) -> str:
    record_id = record.get(endpoint.id_field)
    if isinstance(record_id, str) and record_id:
        return record_id
    as_sent = json.dumps(_json_numbers(record), sort_keys=True, default=str)
    return "sha1:" + hashlib.sha1(as_sent.encode(), usedforsecurity=False).hexdigest()


def _quarantine_row(record: dict[str, Any], endpoint: Endpoint, tenant_id: str, key: str,
                    problems: list[str]) -> dict[str, Any]:
    record_id = record.get(endpoint.id_field)
    return {"tenant_id": tenant_id, "endpoint": endpoint.path, "record_key": key,
            "record_id": record_id if isinstance(record_id, str) else None,
            "updated_date_utc": str(record.get("UpdatedDateUTC")), "reason": "; ".join(problems),
            "payload": _json_numbers(record), "quarantined_at": datetime.now(UTC), "cleared": False}


def _json_numbers(value: Any) -> Any:
    """Nested objects (line items, allocations) are stored as JSON as sent: their numbers must stay
    JSON numbers, and dlt writes a Decimal as a string. A float that reads back as the same decimal
    is the same JSON number; the rare one that would not (over 15 significant digits) stays a string
    rather than be rounded."""
    if isinstance(value, Decimal):
        as_float = float(value)
        return as_float if Decimal(repr(as_float)) == value else str(value)
    if isinstance(value, dict):
        return {k: _json_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_numbers(v) for v in value]
    return value


def _normalise_record(record: dict[str, Any], tenant_id: str) -> dict[str, Any]:
    """Add the tenant and turn top-level .NET JSON dates into datetimes (nested ones stay as sent)."""
    out: dict[str, Any] = {"tenant_id": tenant_id}
    for key, value in record.items():
        if isinstance(value, str) and value.startswith("/Date("):
            parsed = parse_net_date(value)
            out[key] = parsed if parsed is not None else value
        elif isinstance(value, dict | list):
            out[key] = _json_numbers(value)
        else:
            out[key] = value
    return out


def _make_resource(name: str, endpoint: Endpoint, client: XeroClient, settings: SourceSettings,
                   full_refresh: bool) -> DltResource:
    columns = {**endpoint.columns, "tenant_id": {"data_type": "text", "nullable": False}}
    # A record version is keyed by (tenant, id, UpdatedDateUTC); an unversioned record by (tenant, id).
    key = ("tenant_id", endpoint.id_field, "UpdatedDateUTC") if endpoint.versioned else (
        "tenant_id", endpoint.id_field)

    @dlt.resource(
        name=name,
        write_disposition={"disposition": "merge", "strategy": "upsert"},
        primary_key=key,
        columns=columns,
    )
    def fetch() -> Iterator[list[dict[str, Any]]]:
        state = dlt.current.resource_state()
        previous = state.get("modified_since")
        overlap = timedelta(seconds=settings.modified_since_overlap_seconds)
        # A full re-read that a chunk boundary or a crash interrupted goes on from its mark; only a
        # full refresh asked for when none is in progress starts from the beginning.
        continuing = bool(state.get("refresh_in_progress"))
        refreshing = continuing or full_refresh
        start_over = refreshing and not continuing
        since = None
        if previous and not start_over and endpoint.versioned:
            since = datetime.fromisoformat(previous) - overlap
        # A full refresh re-reads everything, so its cursor is what it read (a bad mark heals).
        high_water: datetime | None = (datetime.fromisoformat(previous)
                                       if previous and not start_over else None)
        seen: set[int] = set()
        shifted = False
        # Records of this endpoint now in quarantine: their next clean version clears them.
        quarantined: set[str] = set(state.get("quarantined", []))
        stats = client.stats.setdefault(endpoint.path, EndpointStats())
        params = {**endpoint.params, "order": "UpdatedDateUTC ASC"} if endpoint.paged else endpoint.params
        pages = (client.paged(endpoint.path, endpoint.path, since, params, pause_at=settings.pages_per_chunk)
                 if endpoint.paged
                 else iter([client.get(endpoint.path, params, since).get(endpoint.collection or endpoint.path,
                                                                          [])]))
        finished = True
        for number, records in enumerate(pages, start=1):
            rows, quarantine = [], []
            for record in records:
                record_key = _record_key(record, endpoint)
                problems = record_problems(record, endpoint)
                if problems:
                    log.warning("tenant %s, %s record %s quarantined: %s", client.tenant_id, endpoint.path,
                                record_key, "; ".join(problems))
                    quarantine.append(
                        _quarantine_row(record, endpoint, client.tenant_id, record_key, problems))
                    quarantined.add(record_key)
                    stats.quarantined += 1
                    continue
                if record_key in quarantined:
                    quarantine.append({"tenant_id": client.tenant_id, "endpoint": endpoint.path,
                                       "record_key": record_key, "cleared": True})
                    quarantined.discard(record_key)
                row = _normalise_record(record, client.tenant_id)
                key = hash(record.get(endpoint.id_field))
                if key in seen:
                    # The record changed while we paged, so later pages shifted and one unchanged
                    # record may have slipped between them: keep the old mark, re-read next time.
                    shifted = True
                seen.add(key)
                updated = row.get("UpdatedDateUTC")
                if isinstance(updated, datetime) and (high_water is None or updated > high_water):
                    high_water = updated
                rows.append(row)
            yield rows
            if quarantine:
                yield dlt.mark.with_hints(quarantine, QUARANTINE_HINTS, create_table_variant=True)
            if (number >= settings.pages_per_chunk and len(records) == settings.page_size and not shifted
                    and high_water is not None and (since is None or high_water - overlap > since)):
                # End of a chunk: this load commits its rows with the cursor, so a crash from here on
                # resumes after them; the next load goes on from the cursor (load_tenant).
                client.unfinished.add(name)
                finished = False
                break
        if refreshing and not finished:
            state["refresh_in_progress"] = True
        else:
            state.pop("refresh_in_progress", None)
        state["quarantined"] = sorted(quarantined)
        if high_water is not None and not shifted:
            state["modified_since"] = high_water.isoformat()
        elif shifted:
            log.warning("tenant %s %s: records changed during paging; not advancing the cursor",
                        client.tenant_id, endpoint.path)

    return fetch


@dlt.source(name="xero", max_table_nesting=0)
def xero_source(
    tenant_id: str,
    token_provider: TokenProvider,
    settings: SourceSettings | None = None,
    resources: Sequence[str] = DEFAULT_RESOURCES,
    full_refresh: bool = False,
    token_rejected: TokenRejected | None = None,
    client: XeroClient | None = None,
) -> list[DltResource]:
    """One tenant's Xero records. `token_provider()` returns a valid access token when called;
    `token_rejected(token)`, if given, hears of a token Xero refused so the provider can renew it.
    `client`: the caller's own, to read its per-endpoint traffic (`client.stats`) after the run."""
    settings = settings or SourceSettings()
    unknown = set(resources) - set(ENDPOINTS)
    if unknown:
        raise ValueError(f"unknown Xero resources {sorted(unknown)}; known: {sorted(ENDPOINTS)}")
    client = client or XeroClient(tenant_id, token_provider, settings, token_rejected=token_rejected)
    return [_make_resource(name, ENDPOINTS[name], client, settings, full_refresh) for name in resources]


def load_tenant(pipeline: dlt.Pipeline, client: XeroClient, *, full_refresh: bool = False,
                resources: Sequence[str] = DEFAULT_RESOURCES) -> dict[str, int]:
    """Load a tenant's resources chunk after chunk until none has more to read; return the rows
    loaded per table. Each chunk (`pages_per_chunk` pages of a resource) is one dlt load that
    commits its rows and its cursor together: a failure or a kill loses at most the chunk in
    flight, and the next run resumes from the last one that landed."""
    rows: dict[str, int] = {}
    todo = list(resources)
    while todo:
        client.unfinished.clear()
        pipeline.run(xero_source(client.tenant_id, client.token_provider, client.settings, resources=todo,
                                 full_refresh=full_refresh, client=client))
        for table, count in pipeline.last_trace.last_normalize_info.row_counts.items():
            rows[table] = rows.get(table, 0) + count
        todo = [name for name in resources if name in client.unfinished]
    return rows
