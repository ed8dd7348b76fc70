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
    max_retries: int = 6
    max_retry_wait_seconds: float = 120.0
    request_timeout_seconds: float = 60.0

    @classmethod
    def from_env(cls, environ=os.environ) -> SourceSettings:
        raw = environ.get("XERO_PAGE_SIZE", str(MAX_PAGE_SIZE))
        try:
            page_size = int(raw)
        except ValueError:
            raise ValueError(f"XERO_PAGE_SIZE must be a whole number, got {raw!r}") from None
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"XERO_PAGE_SIZE must be between 1 and {MAX_PAGE_SIZE}, got {page_size}")
        api_url = environ.get("XERO_API_URL", XERO_API_URL).rstrip("/")
        parts = urlsplit(api_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"XERO_API_URL must be an http(s) URL, got {api_url!r}")
        return cls(api_url=api_url, page_size=page_size)
