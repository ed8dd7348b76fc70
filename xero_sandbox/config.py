"""Configuration of a sandbox instance: data shape, identity, limits, faults, webhooks, clock."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import urlsplit

# Fixed anchor so generated data never depends on when the sandbox was started.
DEFAULT_ANCHOR = datetime(2026, 1, 1, tzinfo=UTC)

ALL_SCOPES = (
    "openid",
    "profile",
    "email",
    "offline_access",
    "accounting.transactions",
    "accounting.transactions.read",
    "accounting.invoices",
    "accounting.invoices.read",
    "accounting.payments",
    "accounting.payments.read",
    "accounting.banktransactions.read",
    "accounting.manualjournals.read",
    "accounting.contacts",
    "accounting.contacts.read",
    "accounting.settings",
    "accounting.settings.read",
    "accounting.reports.read",
    "accounting.journals.read",
    "accounting.attachments.read",
)


# The broad transaction scopes: apps created from 2 March 2026 must use the granular ones instead (older apps
# keep these until September 2027): ``SandboxConfig(broad_scopes=True)`` plays such an older app.
BROAD_SCOPES = ("accounting.transactions", "accounting.transactions.read")

# What a read-only sync asks for (the granular scopes), plus OpenID Connect for the sandbox's conveniences.
GRANULAR_READ_SCOPE = (
    "offline_access accounting.invoices.read accounting.payments.read accounting.contacts.read "
    "accounting.settings.read"
)


LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


def registrable_redirect_uri(uri: str) -> bool:
    """What Xero lets an app register as a redirect URI: https, or plain http on localhost/loopback only."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return False
    host = parts.hostname or ""
    if parts.scheme == "https":
        return bool(host)
    return parts.scheme == "http" and host in LOOPBACK_HOSTS


@dataclass
class LimitConfig:
    """Xero's rate limits. ``None`` switches that one limit off."""

    concurrent: int | None = 5
    per_minute: int | None = 60
    per_day: int | None = 5000  # the Starter tier is 1000: see ``starter()``
    app_per_minute: int | None = 10_000
    # Retry-After is reported in wall-clock seconds (sandbox seconds / clock speed) so that a client
    # honouring it is not slowed down by an accelerated clock; False reports sandbox seconds.
    retry_after_wall_clock: bool = True

    @classmethod
    def starter(cls) -> LimitConfig:
        return cls(per_day=1000)

    @classmethod
    def off(cls) -> LimitConfig:
        return cls(concurrent=None, per_minute=None, per_day=None, app_per_minute=None)


@dataclass
class FaultConfig:
    """Random faults, drawn from their own seeded stream so a run is repeatable.

    Rates are probabilities per accounting API call (identity endpoints are never faulted randomly).
    """

    error_rate: float = 0.0  # 500 / 503 answers
    error_statuses: tuple[int, ...] = (500, 503)
    slow_rate: float = 0.0
    slow_seconds: float = 2.0  # wall-clock seconds of added latency
    drop_rate: float = 0.0  # connection closed after headers
    truncate_rate: float = 0.0  # body cut short (valid HTTP, broken JSON)
    malformed_rate: float = 0.0  # non-JSON body (an HTML error page from a proxy)
    latency_ms: float = 0.0  # added to every accounting call (wall clock)
    seed: int = 0


@dataclass
class UserConfig:
    user_id: str
    email: str
    given_name: str = "Sandbox"
    family_name: str = "User"


@dataclass
class SandboxConfig:
    seed: int = 42
    tenants: int = 2
    invoices_per_tenant: int = 50
    # Contacts per tenant; None = derived from invoices (about one contact per 20 invoices, 5..20000).
    contacts_per_tenant: int | None = None
    client_id: str = "sandbox-client-id"
    client_secret: str = "sandbox-client-secret"  # noqa: S105 (public sandbox value)
    # The app's registered redirect URIs (https, or http on loopback, as Xero requires); None = any
    # http(s)://127.0.0.1|localhost|[::1] redirect URI is accepted.
    redirect_uris: list[str] | None = None
    # Extra OAuth clients {client_id: client_secret}.
    extra_clients: dict[str, str] = field(default_factory=dict)
    # Xero's web apps are confidential clients: every token-endpoint and revocation call must authenticate
    # the client (Basic header or client_secret in the body), PKCE or not, else 400 invalid_client. True
    # opts in to public clients (Xero's "Auth code with PKCE" apps): a code exchange with a code_verifier,
    # and the refreshes and revocations that follow, may then send only client_id.
    allow_pkce_without_secret: bool = False
    # False (the default): an app created from 2 March 2026, which must use the granular scopes, so asking
    # for accounting.transactions(.read) is ``invalid_scope``. True: an older app that may still use them.
    broad_scopes: bool = False
    rate_limits: bool = True
    limits: LimitConfig = field(default_factory=LimitConfig)
    faults: FaultConfig = field(default_factory=FaultConfig)
    webhook_url: str | None = None
    webhook_key: str | None = None
    # Anchor of generated data: every generated UpdatedDateUTC is at or before it, and the sandbox clock
    # starts here, so run-time mutations are always newer than generated data.
    anchor: datetime = DEFAULT_ANCHOR
    history_days: int = 730  # generated data spans this many days before the anchor
    clock_speed: float = 1.0  # sandbox seconds per wall second
    # Where the sandbox clock starts: None = the anchor (fully reproducible, the default); a datetime at or
    # after the anchor, e.g. datetime.now(UTC), makes run-time changes and token times line up with real time.
    clock_start: datetime | None = None
    access_token_lifetime: int = 1800
    refresh_token_lifetime: int = 60 * 86400
    refresh_grace: int = 1800
    auth_code_lifetime: int = 300
    # Tier reported in Organisation.Class and used by ``LimitConfig.starter`` users.
    tier: str = "STANDARD"
    users: list[UserConfig] = field(
        default_factory=lambda: [UserConfig("sandbox-user", "demo@sandbox.invalid", "Demo", "User")]
    )
    # If-Modified-Since granularity in seconds. 1 (the default) mimics the coarser filtering Xero clients
    # report: the instant is truncated to the second and records at or after it come back (a little overlap,
    # so a client must de-duplicate); 0 compares "strictly after" at millisecond precision.
    ims_granularity_seconds: int = 1
    # Like Xero on very large organisations: a filtered or re-ordered query that would scan more rows than
    # this answers 400 (plain paging and If-Modified-Since never do). None = no cap.
    max_scan_rows: int | None = 100_000
    # Serialised list pages kept for repeated reads (see query.PageCache); 0 turns the cache off.
    page_cache_mb: int = 256
    provider_name: str = "Xero Sandbox"
    # Xero answers the Accounting API in XML unless ``Accept`` asks for JSON; True relaxes that.
    json_by_default: bool = False

    def __post_init__(self) -> None:
        for uri in self.redirect_uris or ():
            if not registrable_redirect_uri(uri):
                raise ValueError(f"redirect URI {uri!r}: Xero requires https (plain http only on localhost)")

    def effective_limits(self) -> LimitConfig:
        return self.limits if self.rate_limits else LimitConfig.off()

    def clients(self) -> dict[str, str]:
        out = {self.client_id: self.client_secret}
        out.update(self.extra_clients)
        return out

    def n_contacts(self) -> int:
        if self.contacts_per_tenant is not None:
            return max(1, self.contacts_per_tenant)
        return max(5, min(20_000, self.invoices_per_tenant // 20))
