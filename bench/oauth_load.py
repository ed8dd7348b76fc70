"""Bounded loopback load test of the OAuth service: N concurrent users through initiate and callback.

Each user (own JWT, own cookie jar) does: POST /xero/auth/initiate → GET the authorizationUrl on the
sandbox (auto-consent, 302) → GET /xero/auth/callback (code exchange, /connections, upsert, 302).
Only the service's two requests are timed. Everything runs on 127.0.0.1 and stops by itself.

    .venv/bin/python bench/oauth_load.py [--users 50] [--rounds 3] [--database-url postgresql://…]

Without --database-url (or TEST_DATABASE_URL/DATABASE_URL) it uses the embedded PostgreSQL under
.local/. A scratch database is created and dropped.

Recorded figures (2026-11-25, 2 CPUs, PostgreSQL 15 on loopback, the service on its own
least-privilege login (APP_DATABASE_URL), 50 users x 3 flows = 300 service requests, 0 errors):

    service requests/s   97.9          (flows/s 48.9)
    initiate  p95        307 ms
    callback  p95        575 ms        (code exchange + GET /connections + upsert, all 50 at once)
    all       p95        541 ms
"""

import argparse
import os
import secrets
import socket
import statistics
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import psycopg
from psycopg import sql

CLIENT_ID, CLIENT_SECRET = "sandbox-client-id", "sandbox-client-secret"
APP_RETURN_URL = "https://app.example.test/settings/xero"


def server_url(cli_value: str | None) -> str:
    url = cli_value or os.environ.get("TEST_DATABASE_URL") or os.environ.get("DATABASE_URL")
    if url:
        return url
    from orchestration.local_postgres import LocalPostgres
    from orchestration.settings import local_dir

    return LocalPostgres(local_dir()).ensure_running()


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return parts._replace(path=f"/{name}").geturl()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[94] if len(values) > 1 else values[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=50, help="concurrent users (default 50)")
    ap.add_argument("--rounds", type=int, default=3, help="flows per user (default 3)")
    ap.add_argument("--tenants", type=int, default=50, help="sandbox tenants; user i connects tenant i %% T")
    ap.add_argument("--database-url", help="PostgreSQL server to create the scratch database on")
    args = ap.parse_args()
    users, rounds = min(args.users, 200), min(args.rounds, 20)  # bounded

    from oauth_service.db import create_app_login, drop_app_login
    from oauth_service.migrations import upgrade
    from oauth_service.server import ServiceServer
    from oauth_service.settings import Settings, generate_key
    from xero_sandbox import SandboxConfig, SandboxServer

    maintenance = server_url(args.database_url)
    db_name = f"xero_elt_bench_oauth_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(maintenance, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db_name)))
    database_url = with_database(maintenance, db_name)
    app_role = f"xero_elt_bench_{uuid.uuid4().hex[:8]}"
    try:
        upgrade(database_url)
        app_database_url = create_app_login(database_url, app_role)  # the service's own login
        jwt_secret = secrets.token_urlsafe(48)
        config = SandboxConfig(
            seed=7,
            tenants=args.tenants,
            invoices_per_tenant=1,
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            redirect_uris=None,
        )
        with SandboxServer(config, host="127.0.0.1", port=0) as sandbox:
            tenant_ids = [t.tenant_id for t in sandbox.tenants]
            port = free_port()
            base = sandbox.url
            settings = Settings.from_env(
                {
                    "DATABASE_URL": database_url,
                    "APP_DATABASE_URL": app_database_url,
                    "XERO_CLIENT_ID": CLIENT_ID,
                    "XERO_CLIENT_SECRET": CLIENT_SECRET,
                    "XERO_REDIRECT_URI": f"http://127.0.0.1:{port}/xero/auth/callback",
                    "AUTH_JWT_SECRET": jwt_secret,
                    "APP_RETURN_URL": APP_RETURN_URL,
                    "APP_ORIGIN": "https://app.example.test",
                    "TOKEN_ENCRYPTION_KEY": generate_key(),
                    "XERO_AUTHORIZE_URL": f"{base}/identity/connect/authorize",
                    "XERO_TOKEN_URL": f"{base}/connect/token",
                    "XERO_REVOCATION_URL": f"{base}/connect/revocation",
                    "XERO_CONNECTIONS_URL": f"{base}/connections",
                    "XERO_API_URL": f"{base}/api.xro/2.0",
                }
            )
            with ServiceServer(settings, host="127.0.0.1", port=port) as service:
                latencies: dict[str, list[float]] = {"initiate": [], "callback": []}
                errors: list[str] = []
                lock = threading.Lock()
                start_gate = threading.Barrier(users)

                def one_user(i: int) -> None:
                    user_id = str(uuid.uuid4())
                    tenant = tenant_ids[i % len(tenant_ids)]
                    with httpx.Client(timeout=60, follow_redirects=False) as http:
                        start_gate.wait(timeout=60)
                        for _ in range(rounds):
                            now = int(time.time())
                            token = jwt.encode(
                                {"sub": user_id, "aud": "authenticated", "exp": now + 600},
                                jwt_secret,
                                algorithm="HS256",
                            )
                            t0 = time.perf_counter()
                            r = http.post(
                                f"{service.url}/xero/auth/initiate",
                                headers={"Authorization": f"Bearer {token}"},
                            )
                            t1 = time.perf_counter()
                            if r.status_code != 200:
                                with lock:
                                    errors.append(f"initiate {r.status_code}")
                                continue
                            consent = http.get(r.json()["authorizationUrl"] + f"&sandbox_tenants={tenant}")
                            if consent.status_code != 302:
                                with lock:
                                    errors.append(f"authorize {consent.status_code}")
                                continue
                            t2 = time.perf_counter()
                            cb = http.get(consent.headers["location"])
                            t3 = time.perf_counter()
                            outcome = parse_qs(urlsplit(cb.headers.get("location", "")).query)
                            with lock:
                                latencies["initiate"].append(t1 - t0)
                                latencies["callback"].append(t3 - t2)
                                if cb.status_code != 302 or outcome.get("connected") != ["1"]:
                                    errors.append(f"callback {cb.status_code} {outcome}")

                wall0 = time.perf_counter()
                with ThreadPoolExecutor(max_workers=users) as pool:
                    list(pool.map(one_user, range(users)))
                wall = time.perf_counter() - wall0

        requests_done = len(latencies["initiate"]) + len(latencies["callback"])
        flows = len(latencies["callback"])
        all_latencies = latencies["initiate"] + latencies["callback"]
        print(
            f"oauth_load: {users} concurrent users x {rounds} flows (initiate + callback), loopback, "
            f"sandbox with {len(tenant_ids)} tenants, {os.cpu_count()} CPU(s)"
        )
        print(
            f"  flows completed: {flows}, errors: {len(errors)}"
            + (f" (first: {errors[0]})" if errors else "")
        )
        print(f"  wall time: {wall:.2f} s (includes the sandbox's authorize step, untimed per request)")
        print(f"  service requests/s: {requests_done / wall:.1f}   flows/s: {flows / wall:.1f}")
        for name, values in (
            ("initiate", latencies["initiate"]),
            ("callback", latencies["callback"]),
            ("all", all_latencies),
        ):
            if values:
                print(
                    f"  {name:9s} p50 {statistics.median(values) * 1000:7.1f} ms   "
                    f"p95 {p95(values) * 1000:7.1f} ms   max {max(values) * 1000:7.1f} ms"
                )
        return 1 if errors else 0
    finally:
        drop_app_login(maintenance, app_role)
        with psycopg.connect(maintenance, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db_name)))


if __name__ == "__main__":
    sys.exit(main())
