"""`xero-elt demo`: the whole product on embedded defaults, end to end, over real HTTP.

Embedded PostgreSQL → migrations → the sandbox (a local Xero) with demo tenants → the OAuth
service → one demo user connects both organisations through the real authorization-code flow
(initiate → authorize → callback) → both tenants synced through Dagster → figures printed, and
checked against the sandbox's own ground truth.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sys
import time
from decimal import Decimal
from urllib.parse import parse_qs, urlsplit

import jwt
import requests

from orchestration.net import free_loopback_port
from orchestration.settings import DEMO_ENV_FILE, local_dir, prepare_environment, read_env_file

DEMO_USER_ID = "7d3c6f0e-2b1a-4c5d-9e8f-0a1b2c3d4e5f"
DEMO_SEED = 2026
DEMO_TENANTS = 2
DEMO_INVOICES = 400


def demo_settings() -> dict[str, str]:
    """The demo's secrets and Xero app, created once in `.local/demo.env` (mode 0600) so a second
    run can still decrypt the tokens it stored, and later `xero-elt ui`/`sync` read the same
    (see `orchestration.settings.prepare_environment`)."""
    from oauth_service.settings import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, generate_key

    path = local_dir() / DEMO_ENV_FILE
    if not path.exists():
        values = {
            "DEMO_MODE": "1",
            "XERO_CLIENT_ID": DEMO_CLIENT_ID,
            "XERO_CLIENT_SECRET": DEMO_CLIENT_SECRET,
            "AUTH_JWT_SECRET": secrets.token_urlsafe(48),
            "TOKEN_ENCRYPTION_KEY": generate_key(),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write("# Written by `xero-elt demo`: the embedded demo's secrets. Not for real tenants.\n")
            fh.writelines(f"{k}={v}\n" for k, v in values.items())
    return read_env_file(path)


def user_jwt(secret: str, user_id: str, audience: str = "authenticated") -> str:
    """What the web app's auth (Supabase) would hand its user: HS256, sub = user id."""
    now = int(time.time())
    claims = {"sub": user_id, "aud": audience, "role": "authenticated", "iat": now, "exp": now + 600}
    return jwt.encode(claims, secret, algorithm="HS256")


def connect_organisations(service_url: str, token: str, tenant_ids: list[str] | None = None) -> int:
    """Drive the browser's part of the OAuth flow; return how many organisations were connected."""
    http = requests.Session()
    r = http.post(f"{service_url}/xero/auth/initiate", headers={"Authorization": f"Bearer {token}"},
                  timeout=30)
    r.raise_for_status()
    authorize_url = r.json()["authorizationUrl"]
    if tenant_ids:
        authorize_url += "&sandbox_tenants=" + ",".join(tenant_ids)
    consent = http.get(authorize_url, allow_redirects=False, timeout=30)  # Xero's login + consent
    if consent.status_code != 302:
        raise RuntimeError(f"authorize answered {consent.status_code}: {consent.text[:200]}")
    callback = http.get(consent.headers["Location"], allow_redirects=False, timeout=60)
    if callback.status_code not in (302, 303, 307):
        raise RuntimeError(f"callback answered {callback.status_code}: {callback.text[:200]}")
    outcome = parse_qs(urlsplit(callback.headers["Location"]).query)
    if "error" in outcome:
        raise RuntimeError(f"connecting failed: {outcome['error'][0]}")
    return int(outcome["connected"][0])


def dataset_fingerprint(sandbox) -> str:
    """What the sandbox holds, per tenant and resource (counts, totals, statuses, latest change)."""
    import hashlib
    import json

    stable = ("count", "total", "byStatus", "maxUpdatedDateUTC")
    facts = [
        {k: sandbox.truth(t.tenant_id, resource).get(k) for k in stable}
        for t in sandbox.tenants
        for resource in ("Invoices", "Contacts", "Payments", "CreditNotes", "Accounts")
    ]
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()


def run_demo(tenants: int = DEMO_TENANTS, invoices: int = DEMO_INVOICES, seed: int = DEMO_SEED) -> int:
    from oauth_service.migrations import upgrade
    from oauth_service.server import ServiceServer
    from oauth_service.settings import Settings
    from orchestration.sync import sync_tenants
    from xero_sandbox import SandboxConfig, SandboxServer

    embedded = not os.environ.get("DATABASE_URL")
    db = prepare_environment()
    print(f"database: {db.url}" + (" (embedded PostgreSQL, data under .local/)" if embedded else ""))
    upgrade(db.url)
    print("migrations: app schema at head")

    demo = demo_settings()
    config = SandboxConfig(seed=seed, tenants=tenants, invoices_per_tenant=invoices,
                           client_id=demo["XERO_CLIENT_ID"], client_secret=demo["XERO_CLIENT_SECRET"])
    with SandboxServer(config, host="127.0.0.1", port=0) as sandbox:
        print(f"sandbox: local Xero at {sandbox.url} with {len(sandbox.tenants)} organisations")
        port = free_loopback_port()
        os.environ.update({**sandbox.env(), **demo,
                           "XERO_REDIRECT_URI": f"http://127.0.0.1:{port}/xero/auth/callback"})
        settings = Settings.from_env()
        with ServiceServer(settings, host="127.0.0.1", port=port) as service:
            connected = connect_organisations(service.url, user_jwt(demo["AUTH_JWT_SECRET"], DEMO_USER_ID))
            print(f"oauth: demo user {DEMO_USER_ID} connected {connected} organisations "
                  f"through {service.url}")
            # dbt's own progress lines go to a log file; the run's full log is on the Dagster instance.
            log_path = local_dir() / "logs" / f"demo-sync-{time.strftime('%Y%m%d-%H%M%S')}.log"
            log_path.parent.mkdir(parents=True, exist_ok=True)
            # Incremental syncs cannot see data that changed without a new UpdatedDateUTC: when the
            # sandbox's dataset differs from the one this .local/ last loaded (another seed, a newer
            # sandbox), re-read everything, as the product's periodic full re-sync would.
            fingerprint = dataset_fingerprint(sandbox)
            marker = local_dir() / "demo-dataset"
            full_refresh = not marker.exists() or marker.read_text() != fingerprint
            if full_refresh and marker.exists():
                print("sync: the sandbox's data changed since the last demo: full refresh")
            with open(log_path, "w") as log, contextlib.redirect_stdout(log):
                results = sync_tenants([t.tenant_id for t in sandbox.tenants], full_refresh=full_refresh)
            if all(r.success for r in results):
                marker.write_text(fingerprint)
            print(f"sync: {len(results)} tenants through Dagster (dbt output: {log_path})")

        names = {t.tenant_id: t.tenant_name for t in sandbox.tenants}
        failures = 0
        print()
        for r in results:
            truth = sandbox.truth(r.tenant_id, "Invoices")  # its total leaves DELETED invoices out
            expected = (sum(truth["byStatus"].values()), Decimal(str(truth["total"])))
            matches = (r.invoices, r.invoices_total) == expected
            failures += (not r.success) or (not matches)
            state = "ok" if r.success else f"FAILED: {r.error}"
            print(f"{names.get(r.tenant_id, r.tenant_id)} ({r.tenant_id}): run {r.run_id[:8]} {state}")
            print(f"  fetched this run: {r.fetched or {}}; raw invoice versions: {r.raw_invoice_versions}")
            print(f"  analytics.invoices: {r.invoices} invoices (every status), total {r.invoices_total} "
                  f"(sandbox: {expected[0]}, {expected[1]}) {'matches' if matches else 'MISMATCH'}")
    print()
    print("Open the Dagster UI (runs, tenants, asset graph):  .venv/bin/xero-elt ui   → http://127.0.0.1:3000")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(run_demo())
