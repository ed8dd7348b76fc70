"""xero_source settings: Xero's accounting API endpoint and paging/retry knobs."""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlsplit

XERO_API_URL = "https://api.xero.com/api.xro/2.0"
MAX_PAGE_SIZE = 1000  # Xero's maximum since July 2024


@dataclass(frozen=True)
class SourceSettings:
    api_url: str = XERO_API_URL
    page_size: int = MAX_PAGE_SIZE
    # Re-ask for records modified a little before the last high-water mark: If-Modified-Since is
    # reported to filter at a coarser precision than UpdatedDateUTC. Re-fetched versions merge away.
    modified_since_overlap_seconds: int = 300
    max_retries: int = 6  # per request
    max_retries_per_run: int = 60  # one budget for every request of a run
    max_retry_wait_seconds: float = 120.0
    request_timeout_seconds: float = 60.0
    # Xero's per-tenant limit and its rolling window (shorter only for a sandbox whose clock runs
    # fast); the pacer keeps `minute_margin` calls of it unused, i.e. 58 of 60 (97%).
    minute_limit: int = 60
    minute_margin: int = 2
    rate_window_seconds: float = 60.0
    # Calls of the tenant's daily limit (5,000) left to the web app: a sync stops before them.
    day_reserve: int = 250
    # Pages of a resource per dlt load: each load commits its rows and cursor, so a crash loses at
    # most this many pages (50 pages: 50,000 records, a few seconds of reading; the few pages Xero
    # counts after them are read too), and a chunk loads while the next is read (load_tenant): a
    # tenant of 100,000 invoices is two chunks that overlap.
    pages_per_chunk: int = 50
    max_in_flight: int = 5  # Xero's concurrent-call limit per tenant
    pages_ahead: int = 3  # pages of a resource fetched (and read) while earlier ones load

    @classmethod
    def from_env(cls, environ=os.environ) -> SourceSettings:
        page_size = _whole(environ, "XERO_PAGE_SIZE", MAX_PAGE_SIZE, 1, MAX_PAGE_SIZE)
        api_url = environ.get("XERO_API_URL", XERO_API_URL).rstrip("/")
        parts = urlsplit(api_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"XERO_API_URL must be an http(s) URL, got {api_url!r}")
        minute_limit = _whole(environ, "XERO_MINUTE_LIMIT", cls.minute_limit, 1, 10_000)
        return cls(
            api_url=api_url, page_size=page_size, minute_limit=minute_limit,
            minute_margin=min(cls.minute_margin, minute_limit - 1),
            rate_window_seconds=_whole(environ, "XERO_RATE_WINDOW_SECONDS", 60, 1, 3600),
            day_reserve=_whole(environ, "XERO_DAY_RESERVE", cls.day_reserve, 0, 5_000),
            pages_per_chunk=_whole(environ, "XERO_PAGES_PER_CHUNK", cls.pages_per_chunk, 1, 100_000),
            max_retries_per_run=_whole(environ, "XERO_MAX_RETRIES_PER_RUN", cls.max_retries_per_run, 0,
                                       10_000),
        )


def _whole(environ, variable: str, default: int, low: int, high: int) -> int:
    raw = environ.get(variable, str(default))
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{variable} must be a whole number, got {raw!r}") from None
    if not low <= value <= high:
        raise ValueError(f"{variable} must be between {low} and {high}, got {value}")
    return value
