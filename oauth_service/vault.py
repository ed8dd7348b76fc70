"""The token vault: Xero tokens encrypted at rest, refreshed once under a row lock, every access audited.

The pipeline imports this module:

    vault = TokenVault(Settings.from_env())
    token = vault.access_token_for(tenant_id)       # decrypted, refreshed when close to expiry

Refresh safety: tenants authorised together share one rotating refresh token (one `grant_id`).
A refresh locks every row of that grant (`SELECT … FOR UPDATE`, ordered by id), re-checks the
expiry under the lock, calls Xero once, and stores the rotated refresh token in the same
transaction. Concurrent callers in any number of processes wait on the lock and then find a fresh
token: exactly one refresh reaches Xero. A failed refresh is audited on that same connection and
committed before its error is raised (never through a second pooled connection while the lock is
held). Every writer that locks several connection rows locks them in id order (no deadlocks).
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import Connection, Engine, text

from oauth_service.audit import record_audit
from oauth_service.crypto import TokenCipher
from oauth_service.db import app_engine
from oauth_service.settings import Settings
from oauth_service.xero import TokenSet, XeroClient, XeroError, clipped_text, fitting_id

log = logging.getLogger("oauth_service.vault")

CONNECTIONS = "app.xero_connections"
# Only these mean the grant itself is dead (the user must reconnect). A 401 without an error code too.
REAUTH_ERRORS = frozenset({"invalid_grant"})
# These mean Xero does not accept *our client* (wrong XERO_CLIENT_ID/XERO_CLIENT_SECRET, app disabled):
# a configuration problem of this deployment, never a reason to touch the users' connections.
CLIENT_CONFIG_ERRORS = frozenset({"invalid_client", "unauthorized_client"})


class VaultError(Exception):
    """A token could not be produced for a tenant."""

    def __init__(self, message: str, tenant_id: str | None = None):
        super().__init__(message)
        self.tenant_id = tenant_id


class TenantNotConnected(VaultError):
    """No connection for this tenant (never connected, or disconnected)."""


class ReauthRequired(VaultError):
    """Xero no longer accepts this tenant's tokens: a user must reconnect the organisation in the app."""


class TokenRefreshError(VaultError):
    """A refresh failed for a reason that may pass (Xero unreachable, 5xx); try again later."""


class ClientConfigurationError(TokenRefreshError):
    """Xero rejected this app's client credentials (`invalid_client`/`unauthorized_client`): fix
    XERO_CLIENT_ID/XERO_CLIENT_SECRET. No connection was changed."""


class TenantInfo(NamedTuple):
    tenant_id: str
    tenant_name: str | None
    user_id: str
    status: str


class TenantConnection(NamedTuple):
    """A connection whatever its status, as the orchestrator follows it."""

    tenant_id: str
    tenant_name: str | None
    user_id: str
    status: str
    status_reason: str | None  # why it is not active (a reauth's cause), if known
    connected_at: datetime  # the last (re)connection


def _now() -> datetime:
    return datetime.now(UTC)


def _reauth_message(tenant_id: str, tenant_name: str | None, why: str) -> str:
    who = f"'{tenant_name}' ({tenant_id})" if tenant_name else tenant_id
    return (
        f"Xero organisation {who} must be reconnected: {why}. Ask its user to open the app's Xero "
        "connections page and connect the organisation again; syncs for it are paused until then."
    )


@dataclass
class _Cached:
    token: str
    expires_at: datetime


class TokenVault:
    """Tokens of every connected tenant. Thread-safe; one per process is enough."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine | None = None,
        *,
        xero: XeroClient | None = None,
        actor: str = "token_vault",
        cache: bool = True,
    ):
        self.settings = settings
        self._own_engine = engine is None
        self.engine = engine or app_engine(settings, pool_size=5, max_overflow=5)
        self.cipher = TokenCipher(settings.token_encryption_keys)
        self.xero = xero or XeroClient(settings)
        self.margin = timedelta(seconds=settings.refresh_margin_seconds)
        self.actor = actor
        self._cache_enabled = cache
        self._cache: dict[str, _Cached] = {}
        self._cache_lock = threading.Lock()
        # Bumped by every `forget`: a token read before a forget is not cached after it (see _remember).
        self._forgets = 0

    @classmethod
    def from_env(cls, **kwargs: Any) -> TokenVault:
        return cls(Settings.from_env(), **kwargs)

    def close(self) -> None:
        if self._own_engine:
            self.engine.dispose()

    def __enter__(self) -> TokenVault:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ reads
    def access_token_for(self, tenant_id: str) -> str:
        """A working access token for `tenant_id`, refreshed first when within the margin of expiry.

        Raises TenantNotConnected, ReauthRequired (the user must reconnect in the app) or
        TokenRefreshError (transient).
        """
        now = _now()
        with self._cache_lock:
            hit = self._cache.get(tenant_id)
            forgets_seen = self._forgets
        if hit and hit.expires_at - self.margin > now:
            return hit.token

        with self.engine.connect() as conn:
            row = conn.execute(
                text(
                    "SELECT id, user_id, tenant_id, tenant_name, status, access_token, refresh_token, "
                    "token_expires_at, grant_id, xero_connection_id FROM app.xero_connections "
                    "WHERE tenant_id = :t"
                ),
                {"t": tenant_id},
            ).one_or_none()
        self._check_usable(self.engine, row, tenant_id)
        assert row is not None
        if row.access_token and row.token_expires_at and row.token_expires_at - self.margin > now:
            token = self.cipher.decrypt(row.access_token)
            self._audit(self.engine, "token_read", tenant_id, row)
            self._remember(tenant_id, token, row.token_expires_at, read_after=forgets_seen)
            return token
        return self._refresh(tenant_id)

    def _check_usable(self, conn_or_engine: Any, row: Any, tenant_id: str) -> None:
        if row is None or row.status == "disconnected":
            self._audit(conn_or_engine, "token_read", tenant_id, row, outcome="failure",
                        reason="not_connected")
            raise TenantNotConnected(
                f"Xero tenant {tenant_id} is not connected: connect it in the app first", tenant_id
            )
        if row.status == "reauth_required":
            self._audit(conn_or_engine, "token_read", tenant_id, row, outcome="failure",
                        reason="reauth_required")
            raise ReauthRequired(
                _reauth_message(tenant_id, row.tenant_name, "Xero no longer accepts its tokens"), tenant_id
            )

    def _audit(self, conn_or_engine: Any, action: str, tenant_id: str, row: Any = None, *,
               outcome: str = "success", **details: Any) -> None:
        """One audit row about a tenant's connection (its tokens are never part of it)."""
        record_audit(
            conn_or_engine,
            action,
            user_id=None if row is None else row.user_id,
            tenant_id=tenant_id,
            table_accessed=CONNECTIONS,
            record_id=None if row is None else row.id,
            outcome=outcome,
            metadata={"actor": self.actor, **details},
        )

    def _remember(self, tenant_id: str, token: str, expires_at: datetime,
                  read_after: int | None = None) -> None:
        """Cache a token. `read_after`: the forget count when the token was read from the database. A
        token read before a forget (e.g. before another thread reported it refused by Xero) is not
        cached: cached after the forget, it would be handed out again, refused again, and end the sync
        as if the connection were dead."""
        if self._cache_enabled:
            with self._cache_lock:
                if read_after is None or read_after == self._forgets:
                    self._cache[tenant_id] = _Cached(token, expires_at)

    def forget(self, tenant_id: str | None = None) -> None:
        """Drop cached tokens (all, or one tenant's)."""
        with self._cache_lock:
            self._forgets += 1
            if tenant_id is None:
                self._cache.clear()
            else:
                self._cache.pop(tenant_id, None)

    def access_token_rejected(self, tenant_id: str, token: str) -> None:
        """Xero answered 401 to `token` before its recorded expiry (clock skew, revoked early): make
        the next `access_token_for` refresh, unless another caller has already replaced it."""
        self.forget(tenant_id)
        with self.engine.begin() as conn:
            target, _ = self._lock_grant(conn, tenant_id)
            if target is None or not target.access_token:
                return
            if self.cipher.decrypt(target.access_token) != token:
                return  # already refreshed by someone else
            conn.execute(
                text(
                    "UPDATE app.xero_connections SET token_expires_at = now(), updated_at = now() "
                    "WHERE id = :id"
                ),
                {"id": target.id},
            )
            self._audit(conn, "token_rejected", tenant_id, target, outcome="failure",
                        reason="Xero answered 401 before the recorded expiry")
        # Again once the expiry is committed: a thread that read the row between the first forget
        # and the commit saw the refused token still valid and may have cached it meanwhile.
        self.forget(tenant_id)

    # ------------------------------------------------------------------ refresh
    def _lock_grant(self, conn: Connection, tenant_id: str) -> tuple[Any, list[Any]]:
        """Lock every row sharing the tenant's grant (ordered by id); return (target, rows)."""
        for _ in range(5):
            grant_id = conn.execute(
                text("SELECT grant_id FROM app.xero_connections WHERE tenant_id = :t"), {"t": tenant_id}
            ).scalar_one_or_none()
            rows = conn.execute(
                text(
                    "SELECT id, user_id, tenant_id, tenant_name, status, access_token, refresh_token, "
                    "token_expires_at, grant_id, xero_connection_id FROM app.xero_connections "
                    "WHERE tenant_id = :t OR (CAST(:g AS uuid) IS NOT NULL AND grant_id = CAST(:g AS uuid)) "
                    "ORDER BY id FOR UPDATE"
                ),
                {"t": tenant_id, "g": None if grant_id is None else str(grant_id)},
            ).all()
            target = next((r for r in rows if r.tenant_id == tenant_id), None)
            if target is None or target.grant_id == grant_id:
                return target, rows
            # The tenant moved to another grant (reconnected) between the two reads: lock again.
        raise TokenRefreshError(f"could not lock the grant of tenant {tenant_id}", tenant_id)

    def _refresh(self, tenant_id: str) -> str:
        failure: VaultError | None = None
        with self.engine.begin() as conn:
            target, rows = self._lock_grant(conn, tenant_id)
            try:
                token, expires = self._token_locked(conn, tenant_id, target, rows)
            except VaultError as exc:
                failure = exc  # its audit rows (and a dead grant's new status) commit with `conn`
        if failure is not None:
            self.forget(tenant_id)
            raise failure
        self._remember(tenant_id, token, expires)
        return token

    def _token_locked(
        self, conn: Connection, tenant_id: str, target: Any, rows: Sequence[Any]
    ) -> tuple[str, datetime]:
        """The tenant's access token with its grant locked: refreshed unless someone else just did."""
        self._check_usable(conn, target, tenant_id)
        if target.access_token and target.token_expires_at and target.token_expires_at - self.margin > _now():
            # Someone refreshed while we waited for the lock.
            self._audit(conn, "token_read", tenant_id, target)
            return self.cipher.decrypt(target.access_token), target.token_expires_at
        tokens = self._refresh_locked(conn, target, rows)
        if self._detect_removed(conn, tokens, rows, tenant_id):
            why = "its connection was removed in Xero"
            raise ReauthRequired(_reauth_message(tenant_id, target.tenant_name, why), tenant_id)
        self._audit(conn, "token_read", tenant_id, target)
        return tokens.access_token, datetime.fromtimestamp(tokens.expires_at, UTC)

    def _refresh_locked(self, conn: Connection, target: Any, rows: Sequence[Any]) -> TokenSet:
        """Refresh the grant of `target` (rows already locked); store and audit the outcome in `conn`.

        Returns the new tokens; raises ReauthRequired (the state change recorded in `conn`) or
        TokenRefreshError (only the audit row written); the caller commits `conn` either way.
        """
        tenant_id = target.tenant_id
        if not target.refresh_token:
            raise TenantNotConnected(f"Xero tenant {tenant_id} holds no refresh token", tenant_id)
        refresh_token = self.cipher.decrypt(target.refresh_token)
        grant_rows = [r for r in rows if r.status == "active" and r.refresh_token]
        try:
            tokens = self.xero.refresh(refresh_token)
        except XeroError as exc:
            if exc.error in CLIENT_CONFIG_ERRORS:
                self._audit(conn, "token_refresh_failed", tenant_id, target, outcome="failure",
                            error=exc.error, status=exc.status, configuration_error=True)
                log.error(
                    "tenant %s: Xero rejected this app's client credentials (%s): check XERO_CLIENT_ID and "
                    "XERO_CLIENT_SECRET; no connection was changed",
                    tenant_id,
                    exc.error,
                )
                raise ClientConfigurationError(
                    f"refreshing the token of tenant {tenant_id} failed: Xero rejected this app's client "
                    f"credentials ({exc.error}). Check XERO_CLIENT_ID and XERO_CLIENT_SECRET (the Xero app's "
                    "client id and secret); the tenant's connection was left unchanged.",
                    tenant_id,
                ) from None
            if exc.error in REAUTH_ERRORS or (exc.error is None and exc.status == 401):
                reason = f"Xero rejected the refresh token ({exc.error or exc.status})"
                for r in grant_rows:
                    conn.execute(
                        text(
                            "UPDATE app.xero_connections SET status = 'reauth_required', "
                            "status_reason = :why, "
                            "updated_at = now() WHERE id = :id"
                        ),
                        {"why": reason, "id": r.id},
                    )
                    self._audit(conn, "token_refresh_failed", r.tenant_id, r, outcome="failure",
                                error=exc.error, status=exc.status, new_status="reauth_required")
                log.warning(
                    "tenant %s: refresh rejected by Xero (%s); marked reauth_required", tenant_id, exc.error
                )
                raise ReauthRequired(
                    _reauth_message(tenant_id, target.tenant_name, reason), tenant_id
                ) from None
            self._audit(conn, "token_refresh_failed", tenant_id, target, outcome="failure",
                        error=exc.error, status=exc.status, transient=True)
            raise TokenRefreshError(
                f"refreshing the token of tenant {tenant_id} failed: {exc}", tenant_id
            ) from None

        self._store_tokens(conn, [r.id for r in grant_rows] or [target.id], tokens)
        self._audit(conn, "token_refreshed", tenant_id, target, grant_tenants=len(grant_rows),
                    expires_at=datetime.fromtimestamp(tokens.expires_at, UTC).isoformat())
        log.info("tenant %s: token refreshed (%d tenant(s) in the grant)", tenant_id, len(grant_rows))
        return tokens

    def _store_tokens(self, conn: Connection, ids: Iterable[Any], tokens: TokenSet) -> None:
        access = self.cipher.encrypt(tokens.access_token)
        refresh = self.cipher.encrypt(tokens.refresh_token)
        expires = datetime.fromtimestamp(tokens.expires_at, UTC)
        conn.execute(
            text(
                "UPDATE app.xero_connections SET access_token = :a, refresh_token = :r, "
                "token_expires_at = :e, "
                "last_refreshed_at = now(), updated_at = now(), "
                "scopes = COALESCE(CAST(:s AS text), scopes) WHERE id = ANY(:ids)"
            ),
            {"a": access, "r": refresh, "e": expires, "s": tokens.scope, "ids": [str(i) for i in ids]},
        )

    def _detect_removed(
        self, conn: Connection, tokens: TokenSet, rows: Sequence[Any], tenant_id: str
    ) -> bool:
        """After a refresh, check /connections: tenants of the grant no longer there were disconnected
        from Xero's side. Marks them reauth_required; True when `tenant_id` is one of them."""
        try:
            present = {str(c.get("tenantId")) for c in self.xero.connections(tokens.access_token)}
        except XeroError as exc:
            log.warning("tenant %s: could not check /connections after refresh: %s", tenant_id, exc)
            return False
        hit = False
        for r in rows:
            if r.status == "active" and r.refresh_token and r.tenant_id not in present:
                conn.execute(
                    text(
                        "UPDATE app.xero_connections SET status = 'reauth_required', "
                        "status_reason = 'connection removed in Xero', updated_at = now() WHERE id = :id"
                    ),
                    {"id": r.id},
                )
                self._audit(conn, "connection_removed_in_xero", r.tenant_id, r, outcome="failure",
                            new_status="reauth_required")
                hit = hit or r.tenant_id == tenant_id
        return hit

    # ------------------------------------------------------------------ tenants
    def active_tenants(self) -> list[TenantInfo]:
        """Every connection with status `active` (tenant_id, tenant_name, user_id, status)."""
        return [TenantInfo(*t[:4]) for t in self.all_tenants(status="active")]

    def all_tenants(self, status: str | None = None) -> list[TenantConnection]:
        """Every connection (or those with `status`), with why it is not active and when it connected."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT tenant_id, tenant_name, user_id, status, status_reason, connected_at "
                    "FROM app.xero_connections WHERE (CAST(:s AS varchar) IS NULL OR status = :s) "
                    "ORDER BY tenant_name NULLS LAST, tenant_id"
                ),
                {"s": status},
            ).all()
        return [TenantConnection(r.tenant_id, r.tenant_name, str(r.user_id), r.status, r.status_reason,
                                 r.connected_at) for r in rows]

    def tenant(self, tenant_id: str) -> TenantInfo | None:
        with self.engine.connect() as conn:
            r = conn.execute(
                text(
                    "SELECT tenant_id, tenant_name, user_id, status FROM app.xero_connections "
                    "WHERE tenant_id = :t"
                ),
                {"t": tenant_id},
            ).one_or_none()
        return None if r is None else TenantInfo(r.tenant_id, r.tenant_name, str(r.user_id), r.status)

    def tenants_in_use(self, connections: Sequence[dict[str, Any]]) -> list[str]:
        """The tenants among `connections` (as Xero's /connections lists them) whose Xero connection an
        active row of ours uses: the same connection id, or one side's id unknown (then we cannot tell
        them apart, so count it as in use). Another Xero user's connection to the same tenant is a
        different connection, not in use."""
        wanted: dict[str, str | None] = {}  # tenant id → Xero connection id (None when unusable)
        for c in connections:
            if tid := fitting_id(c.get("tenantId"), 255):
                wanted[tid] = fitting_id(c.get("id"), 64)
        if not wanted:
            return []
        with self.engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT tenant_id, xero_connection_id FROM app.xero_connections "
                    "WHERE status = 'active' AND tenant_id = ANY(:ts)"
                ),
                {"ts": list(wanted)},
            ).all()
        return sorted(
            r.tenant_id
            for r in rows
            if r.xero_connection_id is None or wanted[r.tenant_id] in (None, r.xero_connection_id)
        )

    def mark_synced(self, tenant_id: str, when: datetime | None = None) -> None:
        """Record a finished sync of `tenant_id` (`last_sync`)."""
        with self.engine.begin() as conn:
            result = conn.execute(
                text(
                    "UPDATE app.xero_connections SET last_sync = :w, updated_at = now() WHERE tenant_id = :t"
                ),
                {"w": when or _now(), "t": tenant_id},
            )
        if result.rowcount == 0:
            raise TenantNotConnected(f"Xero tenant {tenant_id} is not connected", tenant_id)

    # ------------------------------------------------------------------ connect / disconnect
    def store_authorization(
        self,
        conn: Connection,
        *,
        user_id: str,
        tokens: TokenSet,
        tenants: Sequence[dict[str, Any]],
        ip_address: str | None = None,
    ) -> list[str]:
        """Upsert one connection row per tenant of a fresh authorisation (one new grant). Audited.

        Xero's fields are fitted to the columns; a tenant without a usable tenantId is skipped."""
        grant_id = str(uuid.uuid4())
        access = self.cipher.encrypt(tokens.access_token)
        refresh = self.cipher.encrypt(tokens.refresh_token)
        expires = datetime.fromtimestamp(tokens.expires_at, UTC)
        scopes = tokens.scope or " ".join(self.settings.xero_scopes)
        by_id = {tid: t for t in tenants if (tid := fitting_id(t.get("tenantId"), 255))}
        unusable = sum(1 for t in tenants if not fitting_id(t.get("tenantId"), 255))
        if unusable:
            log.warning("skipped %d connection(s) from Xero without a usable tenantId", unusable)
        # Existing rows are locked up front and in id order, as a refresh (_lock_grant) locks them: a
        # reconnect during a refresh then waits instead of deadlocking.
        previous = {
            r.tenant_id: r
            for r in conn.execute(
                text(
                    "SELECT tenant_id, user_id, status FROM app.xero_connections WHERE tenant_id = ANY(:ts) "
                    "ORDER BY id FOR UPDATE"
                ),
                {"ts": list(by_id)},
            )
        }
        stored: list[str] = []
        for tenant_id, t in sorted(by_id.items()):
            row_id = conn.execute(
                text(
                    """
                    INSERT INTO app.xero_connections AS c
                        (user_id, tenant_id, tenant_name, tenant_type, access_token, refresh_token,
                         token_expires_at, scopes, xero_connection_id, auth_event_id, grant_id, status,
                         status_reason, connected_at, disconnected_at, last_refreshed_at)
                    VALUES (:u, :t, :name, :type, :a, :r, :e, :s, :cid, :aeid, :g, 'active',
                            NULL, now(), NULL, now())
                    ON CONFLICT (tenant_id) DO UPDATE SET
                        user_id = EXCLUDED.user_id, tenant_name = EXCLUDED.tenant_name,
                        tenant_type = EXCLUDED.tenant_type, access_token = EXCLUDED.access_token,
                        refresh_token = EXCLUDED.refresh_token, token_expires_at = EXCLUDED.token_expires_at,
                        scopes = EXCLUDED.scopes, xero_connection_id = EXCLUDED.xero_connection_id,
                        auth_event_id = EXCLUDED.auth_event_id, grant_id = EXCLUDED.grant_id,
                        status = 'active', status_reason = NULL, connected_at = now(),
                        disconnected_at = NULL, last_refreshed_at = now(), updated_at = now()
                    RETURNING id
                    """
                ),
                {
                    "u": str(user_id),
                    "t": tenant_id,
                    "name": clipped_text(t.get("tenantName"), 255),
                    "type": clipped_text(t.get("tenantType"), 32),
                    "a": access,
                    "r": refresh,
                    "e": expires,
                    "s": scopes,
                    "cid": fitting_id(t.get("id"), 64),
                    "aeid": fitting_id(t.get("authEventId"), 64),
                    "g": grant_id,
                },
            ).scalar_one()
            meta: dict[str, Any] = {"tenant_name": clipped_text(t.get("tenantName"), 255), "grant": grant_id}
            if tenant_id in previous:
                meta["previous_status"] = previous[tenant_id].status
                if str(previous[tenant_id].user_id) != str(user_id):
                    meta["previous_user_id"] = str(previous[tenant_id].user_id)
            record_audit(
                conn,
                "xero_connected",
                user_id=user_id,
                tenant_id=tenant_id,
                table_accessed=CONNECTIONS,
                record_id=row_id,
                ip_address=ip_address,
                metadata=meta,
            )
            stored.append(tenant_id)
            self.forget(tenant_id)
        return stored

    def disconnect(self, tenant_id: str, *, user_id: str, ip_address: str | None = None) -> dict[str, Any]:
        """Disconnect one of `user_id`'s tenants: DELETE /connections/{id} at Xero, revoke the refresh
        token when no other tenant of the grant still uses it, drop the tokens, mark `disconnected`.

        Steps, so that our state never contradicts Xero's:
        1. an expiring access token is refreshed first, in its own committed transaction (`_refresh`):
           the rotated refresh token is stored whatever happens next;
        2. under the grant's row lock, DELETE /connections/{id}. When that fails (XeroError) nothing
           changed anywhere: the error propagates and the user may try again;
        3. once Xero deleted the connection, the row is marked `disconnected` (tokens dropped) and
           committed even when the revocation fails; that failure is audited (`token_revoke_failed`).

        Raises TenantNotConnected when the user has no such tenant, XeroError when Xero could not
        delete the connection, TokenRefreshError when the refresh before it failed (nothing changed).
        """
        outcome: dict[str, Any] = {"tenant_id": tenant_id, "xero_connection_deleted": False, "revoked": False}
        with self.engine.connect() as conn:
            row = conn.execute(
                text(
                    "SELECT user_id, status, access_token, token_expires_at FROM app.xero_connections "
                    "WHERE tenant_id = :t"
                ),
                {"t": tenant_id},
            ).one_or_none()
        if row is None or str(row.user_id) != str(user_id):
            raise TenantNotConnected(f"no Xero tenant {tenant_id} for this user", tenant_id)

        grant_dead = False
        if (
            row.status == "active"
            and row.access_token
            and not (row.token_expires_at and row.token_expires_at - timedelta(seconds=60) > _now())
        ):
            try:
                self._refresh(tenant_id)  # committed on its own; TokenRefreshError propagates
            except ReauthRequired:
                grant_dead = True  # the grant is dead at Xero already: nothing left to revoke

        with self.engine.begin() as conn:
            target, rows = self._lock_grant(conn, tenant_id)
            if target is None or str(target.user_id) != str(user_id):
                raise TenantNotConnected(f"no Xero tenant {tenant_id} for this user", tenant_id)
            if target.status == "disconnected":
                outcome["status"] = "disconnected"
                outcome["already"] = True
                return outcome

            access: str | None = None
            refresh: str | None = None
            if target.refresh_token and not grant_dead and target.status == "active":
                refresh = self.cipher.decrypt(target.refresh_token)
            if (
                target.status == "active"
                and target.access_token
                and target.token_expires_at
                and target.token_expires_at > _now()
            ):
                access = self.cipher.decrypt(target.access_token)
            if access and target.xero_connection_id:
                # Raises XeroError: the transaction rolls back, but nothing has changed yet.
                status = self.xero.delete_connection(access, target.xero_connection_id)
                outcome["xero_connection_deleted"] = status in (200, 204)
                outcome["xero_status"] = status
            # From here on Xero has changed: our state follows it, whatever the revocation does.
            others = [
                r for r in rows if r.tenant_id != tenant_id and r.status == "active" and r.refresh_token
            ]
            if refresh and not others:
                try:
                    self.xero.revoke(refresh)
                    outcome["revoked"] = True
                except XeroError as exc:
                    outcome["revoke_error"] = str(exc)
                    log.warning(
                        "tenant %s: disconnected, but revoking the refresh token failed: %s", tenant_id, exc
                    )
                    record_audit(
                        conn,
                        "token_revoke_failed",
                        user_id=user_id,
                        tenant_id=tenant_id,
                        table_accessed=CONNECTIONS,
                        record_id=target.id,
                        ip_address=ip_address,
                        outcome="failure",
                        metadata={
                            "actor": self.actor,
                            "error": exc.error,
                            "status": exc.status,
                            "detail": str(exc),
                            "xero_connection_deleted": outcome["xero_connection_deleted"],
                        },
                    )
            conn.execute(
                text(
                    "UPDATE app.xero_connections SET status = 'disconnected', "
                    "status_reason = 'disconnected by user', "
                    "access_token = NULL, refresh_token = NULL, token_expires_at = NULL, "
                    "disconnected_at = now(), updated_at = now() WHERE id = :id"
                ),
                {"id": target.id},
            )
            record_audit(
                conn,
                "xero_disconnected",
                user_id=user_id,
                tenant_id=tenant_id,
                table_accessed=CONNECTIONS,
                record_id=target.id,
                ip_address=ip_address,
                metadata={k: v for k, v in outcome.items() if k not in ("tenant_id", "revoke_error")},
            )
        self.forget(tenant_id)
        outcome["status"] = "disconnected"
        return outcome


# ---------------------------------------------------------------------- key rotation
def reencrypt_all(engine: Engine, keys: Sequence[str] | str) -> int:
    """Re-encrypt every stored token (and PKCE verifier) under the newest key of `keys`.

    `keys` is the full key list, newest first (as in TOKEN_ENCRYPTION_KEY), and must still hold
    every older key in use. Returns how many values were rewritten. Idempotent.
    """
    if isinstance(keys, str):
        keys = [k for k in keys.split(",") if k.strip()]
    cipher = TokenCipher(keys)
    changed = 0
    with engine.begin() as conn:
        rows = conn.execute(
            text("SELECT id, access_token, refresh_token FROM app.xero_connections ORDER BY id FOR UPDATE")
        ).all()
        for r in rows:
            updates: dict[str, str] = {}
            for column in ("access_token", "refresh_token"):
                value = getattr(r, column)
                if value and not cipher.is_current(value):
                    updates[column] = cipher.rotate(value)
            if updates:
                conn.execute(
                    text(
                        "UPDATE app.xero_connections "
                        "SET access_token = COALESCE(:access_token, access_token), "
                        "refresh_token = COALESCE(:refresh_token, refresh_token) WHERE id = :id"
                    ),
                    {
                        "access_token": updates.get("access_token"),
                        "refresh_token": updates.get("refresh_token"),
                        "id": r.id,
                    },
                )
                changed += len(updates)
        states = conn.execute(
            text("SELECT state_hash, code_verifier FROM app.oauth_states WHERE used_at IS NULL FOR UPDATE")
        ).all()
        for s in states:
            if not cipher.is_current(s.code_verifier):
                conn.execute(
                    text("UPDATE app.oauth_states SET code_verifier = :v WHERE state_hash = :h"),
                    {"v": cipher.rotate(s.code_verifier), "h": s.state_hash},
                )
                changed += 1
        record_audit(
            conn,
            "tokens_reencrypted",
            table_accessed=CONNECTIONS,
            user_id="key_rotation",
            metadata={"values_rewritten": changed, "keys_configured": len(keys)},
        )
    return changed
