"""A small Xero accounting API client: paging, If-Modified-Since, rate limits and retries.

It knows nothing of tokens' storage: it calls `token_provider()` before every request, so a
token refreshed mid-sync (they live 30 minutes) is picked up, and on a 401 asks once more.
"""

from __future__ import annotations

import json
import logging
import random
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from decimal import Decimal
from email.utils import format_datetime
from typing import Any

import requests

from xero_source.settings import SourceSettings

log = logging.getLogger(__name__)

TokenProvider = Callable[[], str]  # a valid access token for the tenant, refreshed as needed
TokenRejected = Callable[[str], None]  # told of a token Xero answered 401 to, before asking again
# ChunkedEncodingError: the connection dropped in the middle of the body.
_TRANSIENT_NETWORK_ERRORS = (
    requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
)
_NET_DATE = re.compile(r"^/Date\((-?\d+)([+-]\d{4})?\)/$")
# What Xero says is left of each limit, on every answer (the names the run metadata uses).
LIMIT_HEADERS = {"X-MinLimit-Remaining": "minute_limit_left", "X-DayLimit-Remaining": "day_limit_left",
                 "X-AppMinLimit-Remaining": "app_minute_limit_left"}


@dataclass
class EndpointStats:
    """One endpoint's traffic in a run: what the orchestrator shows and audits."""

    calls: int = 0  # HTTP answers received, retries included
    bytes: int = 0  # response bodies
    rate_limited: int = 0  # 429s met
    retries: int = 0  # requests sent again (429, 5xx, network, a 401 answered by a fresh token)
    minute_limit_left: int | None = None  # as of the last answer
    day_limit_left: int | None = None
    app_minute_limit_left: int | None = None

    def as_dict(self) -> dict[str, int | None]:
        return asdict(self)


class XeroApiError(RuntimeError):
    """A request that could not be completed; the message names tenant, endpoint and page."""

    def __init__(self, message: str, *, status: int | None = None):
        super().__init__(message)
        self.status = status


class DailyLimitExceeded(XeroApiError):
    """Xero's per-tenant daily limit is spent: retrying today only burns more of nothing."""


def parse_net_date(value: str) -> datetime | None:
    """`/Date(1539993600000+0000)/` → aware UTC datetime (the offset is informational in Xero)."""
    m = _NET_DATE.match(value)
    if not m:
        return None
    return datetime.fromtimestamp(int(m.group(1)) / 1000, tz=UTC)


class XeroClient:
    def __init__(
        self,
        tenant_id: str,
        token_provider: TokenProvider,
        settings: SourceSettings | None = None,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        token_rejected: TokenRejected | None = None,
    ):
        self.tenant_id = tenant_id
        self.token_provider = token_provider
        self.token_rejected = token_rejected
        self.settings = settings or SourceSettings()
        self.session = session or requests.Session()
        self.sleep = sleep
        self.stats: dict[str, EndpointStats] = {}  # by endpoint path

    @property
    def calls(self) -> int:
        return sum(s.calls for s in self.stats.values())

    @property
    def bytes_received(self) -> int:
        return sum(s.bytes for s in self.stats.values())

    def _where(self, endpoint: str, page: int | None) -> str:
        at = f" page {page}" if page is not None else ""
        return f"tenant {self.tenant_id}, {endpoint}{at}"

    def get(self, endpoint: str, params: dict[str, Any] | None = None,
            modified_since: datetime | None = None, page: int | None = None) -> dict[str, Any]:
        """GET one response body (decimals as Decimal), retrying what is worth retrying."""
        url = f"{self.settings.api_url}/{endpoint}"
        headers = {"xero-tenant-id": self.tenant_id, "Accept": "application/json"}
        if modified_since is not None:
            headers["If-Modified-Since"] = format_datetime(modified_since.astimezone(UTC), usegmt=True)
        where = self._where(endpoint, page)
        stats = self.stats.setdefault(endpoint, EndpointStats())
        refreshed_after_401 = False
        attempt = 0
        while True:
            attempt += 1
            if attempt > 1:
                stats.retries += 1
            token = self.token_provider()
            headers["Authorization"] = f"Bearer {token}"
            try:
                resp = self.session.get(url, params=params, headers=headers,
                                        timeout=self.settings.request_timeout_seconds)
            except _TRANSIENT_NETWORK_ERRORS as exc:
                self._backoff_or_raise(attempt, where, f"connection failed ({type(exc).__name__})")
                continue
            stats.calls += 1
            stats.bytes += len(resp.content)
            for header, name in LIMIT_HEADERS.items():
                if (left := resp.headers.get(header, "")).isdigit():
                    setattr(stats, name, int(left))
            status = resp.status_code
            if status == 200:
                try:
                    return json.loads(resp.content, parse_float=Decimal)
                except ValueError:
                    self._backoff_or_raise(attempt, where, "malformed JSON in a 200 response")
                    continue
            if status == 304:
                return {}
            if status == 401 and not refreshed_after_401:
                # Expired between provider and request, or earlier than recorded: ask once more.
                refreshed_after_401 = True
                if self.token_rejected is not None:
                    self.token_rejected(token)
                continue
            if status == 429:
                stats.rate_limited += 1
                problem = resp.headers.get("X-Rate-Limit-Problem", "")
                retry_after = float(resp.headers.get("Retry-After", "60") or 60)
                if problem.lower() == "day":
                    raise DailyLimitExceeded(
                        f"Xero's daily call limit is exhausted for {where}; retry after "
                        f"{retry_after:.0f} s (tomorrow's allowance)", status=429)
                if attempt > self.settings.max_retries:
                    raise XeroApiError(f"still rate limited ({problem or 'unknown'}) after "
                                       f"{attempt - 1} retries: {where}", status=429)
                log.warning("rate limited (%s) on %s; waiting %.1f s", problem, where, retry_after)
                self.sleep(min(retry_after, self.settings.max_retry_wait_seconds))
                continue
            if status in (500, 502, 503, 504):
                self._backoff_or_raise(attempt, where, f"HTTP {status}", status)
                continue
            raise XeroApiError(f"HTTP {status} from Xero for {where}: {_error_text(resp)}", status=status)

    def _backoff_or_raise(self, attempt: int, where: str, reason: str, status: int | None = None) -> None:
        if attempt > self.settings.max_retries:
            raise XeroApiError(f"{reason} after {attempt - 1} retries: {where}", status=status)
        delay = min(self.settings.max_retry_wait_seconds, 0.5 * 2 ** (attempt - 1)) * random.uniform(0.5, 1)
        log.warning("%s on %s; retry %d in %.1f s", reason, where, attempt, delay)
        self.sleep(delay)

    def paged(self, endpoint: str, collection: str, modified_since: datetime | None = None,
              params: dict[str, Any] | None = None) -> Iterator[list[dict[str, Any]]]:
        """Yield each page's records until the first page shorter than the page size."""
        page = 1
        size = self.settings.page_size
        while True:
            body = self.get(endpoint, {**(params or {}), "page": page, "pageSize": size},
                            modified_since, page)
            records = body.get(collection, [])
            if records:
                yield records
            if len(records) < size:
                return
            page += 1


def _error_text(resp: requests.Response) -> str:
    """A short, token-free description of an error body (Xero's ValidationException, problem JSON…)."""
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:200]
    if isinstance(body, dict):
        for key in ("Message", "Detail", "Title", "error"):
            if body.get(key):
                elements = body.get("Elements") or []
                errors = [e.get("Message") for el in elements for e in el.get("ValidationErrors", [])]
                return f"{body[key]}{'; ' + '; '.join(errors) if errors else ''}"
    return str(body)[:200]
