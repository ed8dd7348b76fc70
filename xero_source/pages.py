"""A page of Xero records read: its JSON body parsed and typed into an Arrow table, with what
paging needs to know of it (how many records came, how many pages Xero counts)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from xero_source.client import MalformedBody, parse_body
from xero_source.columns import PageTable, page_table


@dataclass(frozen=True)
class PageSpec:
    """What reading one endpoint's pages needs."""

    collection: str  # the response's list ("Invoices", "Organisations")
    tenant_id: str
    id_field: str
    versioned: bool
    columns: Mapping[str, Mapping[str, Any]]  # the raw table's column hints, by column name


@dataclass
class Page:
    """One page read: its records typed, and what paging needs to know of it."""

    count: int  # records Xero sent
    page_count: int | None  # pages in all, as Xero's `pagination` says (None: not sent)
    typed: PageTable
    problem_records: dict[int, dict[str, Any]]  # the records that could not be typed, as sent


def read_page(body: bytes, spec: PageSpec) -> Page:
    """Parse and type one page's body. A body that is no JSON object raises MalformedBody (the
    client asks for it again)."""
    answer = parse_body(body)
    if not isinstance(answer, dict):
        raise MalformedBody(f"malformed JSON: an object was expected, got {type(answer).__name__}")
    records = answer.get(spec.collection) or []
    pagination = answer.get("pagination")
    page_count = pagination.get("pageCount") if isinstance(pagination, dict) else None
    typed = page_table(records, spec.tenant_id, spec.id_field, spec.versioned, spec.columns)
    return Page(len(records), page_count if type(page_count) is int else None, typed,
                {at: records[at] for at in typed.problems})
