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
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from urllib.parse import parse_qs, urlsplit

import jwt
import requests

from oauth_service.settings import SettingsError
from orchestration.locks import connect, lock_key
from orchestration.net import free_loopback_port
from orchestration.settings import (
    DEMO_ENV_FILE,
    REPO_ROOT,
    DemoWorld,
    local_dir,
    prepare_environment,
    read_env_file,
)
from xero_sandbox import SandboxConfig, SandboxServer

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


@dataclass
class DemoPlatform:
    sandbox: SandboxServer
    service_url: str
    connected: int  # organisations the demo user connected through the service
    env: dict[str, str]  # what points a process (Dagster's, too) at this local Xero


@contextmanager
def demo_platform(world: DemoWorld) -> Iterator[DemoPlatform]:
    """The demo's local Xero (the sandbox, over real HTTP) and the OAuth service, with the demo
    user's organisations connected through the real authorization-code flow. The sandbox's data
    set comes from `world`'s seed, so the demo and a later `xero-elt ui` see the same
    organisations and data; connecting again gives the stored tokens to this sandbox, where they
    refresh while it runs."""
    from oauth_service.server import ServiceServer
    from oauth_service.settings import Settings

    demo = demo_settings()
    config = SandboxConfig(seed=world.seed, tenants=world.tenants, invoices_per_tenant=world.invoices,
                           client_id=demo["XERO_CLIENT_ID"], client_secret=demo["XERO_CLIENT_SECRET"])
    with SandboxServer(config, host="127.0.0.1", port=0) as sandbox:
        port = free_loopback_port()
        env = {**sandbox.env(), **demo, "XERO_REDIRECT_URI": f"http://127.0.0.1:{port}/xero/auth/callback"}
        os.environ.update(env)
        with ServiceServer(Settings.from_env(), host="127.0.0.1", port=port) as service:
            connected = connect_organisations(service.url, user_jwt(demo["AUTH_JWT_SECRET"], DEMO_USER_ID))
            yield DemoPlatform(sandbox, service.url, connected, env)


def run_demo(tenants: int = DEMO_TENANTS, invoices: int = DEMO_INVOICES, seed: int = DEMO_SEED) -> int:
    from oauth_service.migrations import upgrade
    from orchestration.sync import sync_tenants

    embedded = not os.environ.get("DATABASE_URL")
    db = prepare_environment()
    print(f"database: {db.url}" + (" (embedded PostgreSQL, data under .local/)" if embedded else ""))
    upgrade(db.url)
    print("migrations: app schema at head")
    world = DemoWorld(database=db.address, seed=seed, tenants=tenants, invoices=invoices)
    world.save()  # `xero-elt ui` brings this world back

    with demo_platform(world) as platform:
        sandbox = platform.sandbox
        print(f"sandbox: local Xero at {sandbox.url} with {len(sandbox.tenants)} organisations")
        print(f"oauth: demo user {DEMO_USER_ID} connected {platform.connected} organisations "
              f"through {platform.service_url}")
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
    print("  (it brings this demo's local Xero and OAuth service back, so runs launched there work)")
    return 1 if failures else 0


def run_ui(host: str, port: int) -> int:
    """`xero-elt ui`: the Dagster webserver and daemon (`dagster dev`) on the configured instance.
    In the demo's world (DEMO_MODE, see prepare_environment) the demo's local Xero and OAuth
    service run beside them, in this process, for as long as the UI does: a backfill, a
    re-execution or the schedule's next tick then calls the sandbox, never Xero's real hosts.
    Outside demo mode nothing else starts."""
    prepare_environment()
    dagster = os.path.join(os.path.dirname(sys.executable), "dagster")
    argv = [dagster, "dev", "-w", str(REPO_ROOT / "workspace.yaml"), "-h", host, "-p", str(port)]
    print(f"Dagster UI on http://{host}:{port} (instance: {os.environ['DAGSTER_HOME']})", flush=True)
    if os.environ.get("DEMO_MODE") != "1":
        os.execv(dagster, argv)  # noqa: S606 - the webserver and the daemon, in the foreground
    world = DemoWorld.load() or DemoWorld("", DEMO_SEED, DEMO_TENANTS, DEMO_INVOICES)
    # One local Xero per demo: a second would hand the demo's organisations new tokens that the
    # first one's runs cannot use.
    with connect(os.environ["DATABASE_URL"], "xero-elt ui (demo)") as conn:
        if not conn.execute("SELECT pg_try_advisory_lock(%s)", (lock_key("demo-ui"),)).fetchone()[0]:
            raise SettingsError("another `xero-elt ui` serves this demo already (its local Xero holds the "
                                "demo's tokens): stop it first, or use it")
        return _run_ui_beside(world, argv)


def _run_ui_beside(world: DemoWorld, argv: list[str]) -> int:
    with demo_platform(world) as platform:
        print(f"demo: local Xero at {platform.sandbox.url} and the OAuth service at {platform.service_url}; "
              f"{platform.connected} demo organisations connected through them", flush=True)
        # In a session of its own, so that stopping the UI stops every process dagster dev started
        # (webserver, daemon, code servers, runs) before the local Xero they were calling.
        dagster_dev = subprocess.Popen(argv, env=dict(os.environ), start_new_session=True)  # noqa: S603
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: _stop_session(dagster_dev))
        return dagster_dev.wait()


def _stop_session(leader: subprocess.Popen, grace_seconds: float = 20) -> None:
    """Ctrl-C for the leader's whole session (dagster dev shuts its services down on it); whatever
    is still running after the grace is killed."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(leader.pid, signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            leader.wait(grace_seconds)
        os.killpg(leader.pid, signal.SIGKILL)


if __name__ == "__main__":
    sys.exit(run_demo())
