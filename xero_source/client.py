"""A small Xero accounting API client: paging, If-Modified-Since, rate limits and retries.

It knows nothing of tokens' storage: it calls `token_provider()` before every request, so a
token refreshed mid-sync (they live 30 minutes) is picked up, and on a 401 asks once more. It
paces itself within Xero's limits (pacing.py) rather than waiting for 429s, and a run has one
retry budget for all its requests, so a sick Xero cannot keep it busy for hours.
"""

from __future__ import annotations

import json
import logging
import math
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from email.utils import format_datetime
from typing import Any, Protocol, TypeVar

import orjson
import requests
import urllib3

from xero_source.errors import DailyLimitExceeded, XeroApiError, XeroRequestRefused
from xero_source.pacing import LIMIT_HEADERS, AppBudget, TenantPacer, describe_wait
from xero_source.settings import SourceSettings

log = logging.getLogger(__name__)

TokenProvider = Callable[[], str]  # a valid access token for the tenant, refreshed as needed
TokenRejected = Callable[[str], None]  # told of a token Xero answered 401 to, before asking again
# ChunkedEncodingError and urllib3.exceptions.HTTPError: the connection dropped in the middle of the body.
_TRANSIENT_NETWORK_ERRORS = (
    requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
    urllib3.exceptions.HTTPError,  # the body's read (a dropped connection, a read timeout)
)
MAX_TOKENS_REFUSED = 3  # different tokens answered 401 in one request before giving up
NOT_MODIFIED = b"{}"  # what a 304 (nothing modified since) is parsed as: an empty answer
T = TypeVar("T")


class PageRead(Protocol):
    """What paging needs to know of a page read (`pages.Page`)."""

    count: int  # records on the page
    page_count: int | None  # pages in all, as Xero's `pagination` says


P = TypeVar("P", bound=PageRead)


@dataclass
class EndpointStats:
    """One endpoint's traffic in a run: what the orchestrator shows and audits."""

    calls: int = 0  # HTTP answers received, retries included
    bytes: int = 0  # response bodies
    rate_limited: int = 0  # 429s met
    retries: int = 0  # requests sent again (429, 5xx, network, a 401 answered by a fresh token)
    quarantined: int = 0  # records that could not be typed, kept in raw_xero.quarantine
    minute_limit_left: int | None = None  # as of the last answer
    day_limit_left: int | None = None
    app_minute_limit_left: int | None = None

    def as_dict(self) -> dict[str, int | None]:
        return asdict(self)


# A JSON number with more significant digits than a double holds exactly (15) is a run of 16 or
# more digits and dots; bytes.translate and `in` find one in a 1 MB page in about 2 ms.
_DIGITS_AND_DOTS = bytes(ord("1") if chr(i) in "0123456789." else ord("0") for i in range(256))
_LONG_RUN = b"1" * 16


class MalformedBody(ValueError):
    """A 200 answer whose body is not the JSON expected (truncated, cut off): asked for again."""


def parse_body(content: bytes) -> Any:
    """A JSON body, fast (orjson: numbers as doubles, exact to 15 significant digits, which holds
    every amount the raw columns can take); a body with a longer run of digits (a long number, or
    a long digit string such as an account number) is parsed with Decimals, so nothing is rounded."""
    try:
        if _LONG_RUN in content.translate(_DIGITS_AND_DOTS):
            return json.loads(content, parse_float=Decimal)
        return orjson.loads(content)
    except ValueError as exc:  # orjson's and json's decode errors
        raise MalformedBody(f"malformed JSON: {exc}") from None


class XeroClient:
    def __init__(
        self,
        tenant_id: str,
        token_provider: TokenProvider,
        settings: SourceSettings | None = None,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        token_rejected: TokenRejected | None = None,
        app_budget: AppBudget | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.tenant_id = tenant_id
        self.token_provider = token_provider
        self.token_rejected = token_rejected
        self.settings = settings or SourceSettings()
        self.session = session or requests.Session()
        self.sleep = sleep
        self.stats: dict[str, EndpointStats] = {}  # by endpoint path
        s = self.settings
        self.pacer = TenantPacer(tenant_id, s.minute_limit, s.minute_margin, s.rate_window_seconds,
                                 s.day_reserve, app_budget, clock=clock, sleep=lambda t: self.sleep(t))
        self.retries_left = s.max_retries_per_run
        # Resources whose last load stopped at a chunk boundary: load again to go on (load_tenant).
        self.unfinished: set[str] = set()
        # Resources page ahead in threads of their own: Xero allows 5 calls in flight per tenant.
        self.in_flight = threading.BoundedSemaphore(s.max_in_flight)
        self._retry_lock = threading.Lock()

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
            modified_since: datetime | None = None, page: int | None = None,
            parse: Callable[[bytes], T] = parse_body) -> T:
        """GET one response, retrying what is worth retrying; `parse(body)` makes what is returned
        (default: the JSON, decimals as Decimal). A body it finds malformed (MalformedBody) is asked
        for again; a 304 (nothing modified) is parsed as `{}`."""
        url = f"{self.settings.api_url}/{endpoint}"
        headers = {"xero-tenant-id": self.tenant_id, "Accept": "application/json"}
        if modified_since is not None:
            headers["If-Modified-Since"] = format_datetime(modified_since.astimezone(UTC), usegmt=True)
        where = self._where(endpoint, page)
        stats = self.stats.setdefault(endpoint, EndpointStats())
        refused: set[str] = set()  # tokens Xero answered 401 to
        attempt = 0
        while True:
            attempt += 1
            if attempt > 1:
                stats.retries += 1
                self._spend_retry(where)
            call = self.pacer.before_call(where)
            token = self.token_provider()
            headers["Authorization"] = f"Bearer {token}"
            try:
                with self.in_flight:
                    resp = self.session.get(url, params=params, headers=headers, stream=True,
                                            timeout=self.settings.request_timeout_seconds)
                    body = _read_body(resp)
            except _TRANSIENT_NETWORK_ERRORS as exc:
                self._backoff_or_raise(attempt, where, f"connection failed ({type(exc).__name__})")
                continue
            stats.calls += 1
            stats.bytes += len(body)
            self.pacer.after_answer(call, resp.headers)
            for name in LIMIT_HEADERS.values():
                if name in self.pacer.left:
                    setattr(stats, name, self.pacer.left[name])
            status = resp.status_code
            if status == 200:
                try:
                    return parse(body)
                except MalformedBody:
                    self._backoff_or_raise(attempt, where, "malformed JSON in a 200 response")
                    continue
            if status == 304:
                return parse(NOT_MODIFIED)
            if status == 401 and token not in refused and len(refused) < MAX_TOKENS_REFUSED:
                # Expired between provider and request, or earlier than recorded, or renewed by
                # another worker meanwhile: report it and ask for a token again. A token refused
                # twice (the provider could not renew it) is the connection's end, not a retry.
                refused.add(token)
                if self.token_rejected is not None:
                    self.token_rejected(token)
                continue
            if status == 429:
                stats.rate_limited += 1
                problem = resp.headers.get("X-Rate-Limit-Problem", "")
                retry_after = self.pacer.retry_after(resp.headers)
                if problem.lower() == "day":
                    resets = datetime.now(UTC) + timedelta(seconds=retry_after)
                    raise DailyLimitExceeded(
                        f"Xero's daily call limit is exhausted for {where}; it frees up "
                        f"{describe_wait(retry_after)} (about {resets:%Y-%m-%d %H:%M} UTC)", status=429)
                if attempt > self.settings.max_retries:
                    raise XeroApiError(f"still rate limited ({problem or 'unknown'}) after "
                                       f"{attempt - 1} retries: {where}", status=429)
                log.warning("rate limited (%s) on %s; waiting %.1f s", problem, where, retry_after)
                self.pacer.wait_out_429(min(retry_after, self.settings.max_retry_wait_seconds))
                continue
            if status in (500, 502, 503, 504):
                self._backoff_or_raise(attempt, where, f"HTTP {status}", status)
                continue
            if status in (401, 403, 404):
                why = {401: "Xero refused the renewed token too (the connection must be renewed)",
                       403: "Xero refused access (the organisation withdrew it, or a scope is missing)",
                       404: "Xero does not know this resource"}[status]
                raise XeroRequestRefused(f"HTTP {status} for {where}: {why}: {_error_text(body)}",
                                         status=status)
            raise XeroApiError(f"HTTP {status} from Xero for {where}: {_error_text(body)}", status=status)

    def _spend_retry(self, where: str) -> None:
        """One budget for the whole run: a Xero that fails every other call ends the run, with the
        pages already loaded kept, rather than retrying each request up to its own limit."""
        with self._retry_lock:
            if self.retries_left <= 0:
                raise XeroApiError(f"the run's retry budget ({self.settings.max_retries_per_run} retries) "
                                   f"is spent: {where}")
            self.retries_left -= 1

    def _backoff_or_raise(self, attempt: int, where: str, reason: str, status: int | None = None) -> None:
        if attempt > self.settings.max_retries:
            raise XeroApiError(f"{reason} after {attempt - 1} retries: {where}", status=status)
        delay = min(self.settings.max_retry_wait_seconds, 0.5 * 2 ** (attempt - 1)) * random.uniform(0.5, 1)
        log.warning("%s on %s; retry %d in %.1f s", reason, where, attempt, delay)
        self.sleep(delay)

    def paged(self, endpoint: str, read: Callable[[bytes], P], modified_since: datetime | None = None,
              params: dict[str, Any] | None = None, pause_at: int | None = None) -> Iterator[P]:
        """Yield each page, as `read(body)` makes it, until the first page shorter than the page
        size.

        Pages are fetched ahead, in threads of their own, while the caller handles earlier ones:
        as many as Xero's `pagination.pageCount` says there are (up to `pages_ahead` at a time),
        or, without it, the next one once a page is full; so paging ahead makes no call that
        paging one by one would not. Nothing is fetched past page `pause_at` (where the caller
        may stop: a chunk's end) unless the caller goes on."""
        size = self.settings.page_size
        ahead = max(1, self.settings.pages_ahead)

        def fetch(number: int) -> P:
            got = self.get(endpoint, {**(params or {}), "page": number, "pageSize": size}, modified_since,
                           number, parse=read)
            left = self.pacer.left
            log.info("tenant %s %s page %d: %d record(s); limits left: minute %s, day %s, app minute %s",
                     self.tenant_id, endpoint, number, got.count, left.get("minute_limit_left"),
                     left.get("day_limit_left"), left.get("app_minute_limit_left"))
            return got

        with ThreadPoolExecutor(max_workers=ahead, thread_name_prefix=f"xero-{endpoint}") as fetchers:
            pending: deque[Future] = deque()
            requested = 0

            def request_up_to(last: float) -> None:
                nonlocal requested
                while requested < last:
                    requested += 1
                    pending.append(fetchers.submit(fetch, requested))

            try:
                limit = pause_at or math.inf
                request_up_to(1)
                number = 0
                while pending:
                    got = pending.popleft().result()
                    number += 1
                    more = got.count == size
                    if more:
                        request_up_to(min(max(got.page_count or 0, number + 1), number + ahead, limit))
                    if got.count:
                        yield got
                    if not more:
                        return  # pages Xero counted that never came (records left meanwhile) are dropped
                    if number == limit:  # the caller went on past the pause
                        limit = math.inf
                        request_up_to(number + 1)
            finally:
                for future in pending:
                    future.cancel()


def _read_body(resp: requests.Response) -> bytes:
    """The whole body in one read. requests' own reading takes it 10 KB at a time, each chunk
    waiting for the GIL while the loading thread holds it: a 1.7 MB page then took ~70 ms."""
    try:
        return resp.raw.read(decode_content=True)
    finally:
        resp.raw.release_conn()


def _error_text(content: bytes) -> str:
    """A short, token-free description of an error body (Xero's ValidationException, problem JSON…)."""
    try:
        body = json.loads(content)
    except ValueError:
        return content[:200].decode(errors="replace")
    if isinstance(body, dict):
        for key in ("Message", "Detail", "Title", "error"):
            if body.get(key):
                elements = body.get("Elements") or []
                errors = [e.get("Message") for el in elements for e in el.get("ValidationErrors", [])]
                return f"{body[key]}{'; ' + '; '.join(errors) if errors else ''}"
    return str(body)[:200]
