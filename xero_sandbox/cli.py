"""``xero-elt sandbox``: run the local Xero, or drive a running one through its admin API.

xero-elt sandbox --port 8765 --tenants 2 --invoices 50 --seed 42 [--no-rate-limits] [--per-minute off]
xero-elt sandbox tenants  --url http://127.0.0.1:8765
xero-elt sandbox truth    --url ... --tenant ID [--resource Invoices] [--jsonl]
xero-elt sandbox mutate   --url ... --tenant ID ACTION [key=value ...]   (e.g. pay_invoice invoice_id=...)
xero-elt sandbox clock    --url ... [--advance SECONDS] [--speed X]
xero-elt sandbox stats    --url ... [--reset]
xero-elt sandbox fault    --url ... KIND [--endpoint Invoices] [--page 3] [--times 1] [--tenant ID]
xero-elt sandbox faults   --url ... [--clear]
xero-elt sandbox offline  --url ... --tenant ID [--back]
xero-elt sandbox disconnect --url ... --tenant ID      (the organisation removes the app: connections gone)
xero-elt sandbox revoke   --url ... [--user ID]        (the user revokes the app: tokens and connections gone)
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from datetime import UTC, datetime
from typing import Any
from urllib.error import HTTPError
from urllib.request import Request, urlopen

from .config import DEFAULT_ANCHOR, FaultConfig, LimitConfig, SandboxConfig

SUBCOMMANDS = (
    "serve",
    "tenants",
    "truth",
    "mutate",
    "clock",
    "stats",
    "fault",
    "faults",
    "offline",
    "disconnect",
    "revoke",
)
DEFAULT_URL = "http://127.0.0.1:8765"
TIER_DEFAULT = -1  # --per-day not given: 5,000 (1,000 with --starter)


def limit(raw: str) -> int | None:
    """A limit's value: a positive number, or ``off`` to switch that one limit off."""
    if raw.lower() == "off":
        return None
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number or 'off', got {raw!r}")
    return value


def _serve_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="xero-elt sandbox", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    p.add_argument("--tenants", type=int, default=2)
    p.add_argument("--invoices", type=int, default=50, help="invoices per tenant (up to 1,000,000+)")
    p.add_argument("--contacts", type=int, default=None, help="contacts per tenant (default: invoices/20)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument(
        "--anchor",
        default=DEFAULT_ANCHOR.isoformat(),
        help="ISO instant generated data ends at; the sandbox clock starts here",
    )
    p.add_argument("--history-days", type=int, default=730)
    p.add_argument("--clock-speed", type=float, default=1.0, help="sandbox seconds per wall second")
    p.add_argument(
        "--clock-start",
        default=None,
        help="ISO instant the sandbox clock starts at, or 'now' (default: the anchor)",
    )
    p.add_argument("--no-rate-limits", action="store_true", help="switch every rate limit off")
    p.add_argument("--starter", action="store_true", help="Starter tier: 1,000 calls per tenant per day")
    # Each limit: a number, or "off" to switch just that one off.
    p.add_argument("--per-minute", type=limit, default=60, help="calls per tenant per minute (or off)")
    p.add_argument("--per-day", type=limit, default=TIER_DEFAULT, help="calls per tenant per day (or off)")
    p.add_argument("--concurrent", type=limit, default=5, help="calls in flight per tenant (or off)")
    p.add_argument("--app-per-minute", type=limit, default=10_000, help="calls per app per minute (or off)")
    p.add_argument("--client-id", default="sandbox-client-id")
    p.add_argument("--client-secret", default="sandbox-client-secret")
    p.add_argument(
        "--redirect-uri",
        action="append",
        default=None,
        help="allowed redirect URI (repeatable); default: any loopback http(s) URI",
    )
    p.add_argument(
        "--broad-scopes",
        action="store_true",
        help="play an app created before 2 March 2026: accounting.transactions(.read) allowed",
    )
    p.add_argument(
        "--public-pkce",
        action="store_true",
        help="allow public PKCE clients (no client secret); Xero web apps are confidential",
    )
    p.add_argument("--webhook-url", default=None)
    p.add_argument("--webhook-key", default=None)
    p.add_argument("--error-rate", type=float, default=0.0, help="random 500/503 rate on API calls")
    p.add_argument("--slow-rate", type=float, default=0.0)
    p.add_argument("--slow-seconds", type=float, default=2.0, help="latency a slow fault adds")
    p.add_argument("--drop-rate", type=float, default=0.0, help="connection dropped mid-body")
    p.add_argument("--truncate-rate", type=float, default=0.0, help="body cut short")
    p.add_argument("--malformed-rate", type=float, default=0.0, help="an HTML error page, not the answer")
    p.add_argument("--latency-ms", type=float, default=0.0)
    p.add_argument("--fault-seed", type=int, default=0)
    p.add_argument(
        "--ims-granularity",
        type=int,
        default=1,
        help="If-Modified-Since precision in seconds (0: strictly after, to the millisecond)",
    )
    p.add_argument(
        "--max-scan-rows",
        type=int,
        default=100_000,
        help="filtered/re-ordered queries scanning more rows answer 400 (0 = no cap)",
    )
    p.add_argument(
        "--page-cache-mb",
        type=int,
        default=256,
        help="memory for serialised list pages served again unchanged (0 = off)",
    )
    p.add_argument("--log-level", default="warning")
    p.add_argument("--json", action="store_true", help="print the ready line as JSON")
    return p


def config_from_args(a: argparse.Namespace) -> SandboxConfig:
    anchor = datetime.fromisoformat(a.anchor.replace("Z", "+00:00"))
    clock_start = None
    if a.clock_start == "now":
        clock_start = datetime.now(UTC)
    elif a.clock_start:
        clock_start = datetime.fromisoformat(a.clock_start.replace("Z", "+00:00"))
    per_day = (1000 if a.starter else 5000) if a.per_day == TIER_DEFAULT else a.per_day
    limits = LimitConfig(
        concurrent=a.concurrent, per_minute=a.per_minute, per_day=per_day, app_per_minute=a.app_per_minute
    )
    return SandboxConfig(
        seed=a.seed,
        tenants=a.tenants,
        invoices_per_tenant=a.invoices,
        contacts_per_tenant=a.contacts,
        client_id=a.client_id,
        client_secret=a.client_secret,
        redirect_uris=a.redirect_uri,
        broad_scopes=a.broad_scopes,
        allow_pkce_without_secret=a.public_pkce,
        rate_limits=not a.no_rate_limits,
        limits=limits,
        faults=FaultConfig(
            error_rate=a.error_rate,
            slow_rate=a.slow_rate,
            slow_seconds=a.slow_seconds,
            drop_rate=a.drop_rate,
            truncate_rate=a.truncate_rate,
            malformed_rate=a.malformed_rate,
            latency_ms=a.latency_ms,
            seed=a.fault_seed,
        ),
        webhook_url=a.webhook_url,
        webhook_key=a.webhook_key,
        anchor=anchor,
        history_days=a.history_days,
        clock_speed=a.clock_speed,
        clock_start=clock_start,
        max_scan_rows=a.max_scan_rows or None,
        page_cache_mb=a.page_cache_mb,
        ims_granularity_seconds=a.ims_granularity,
        tier="STARTER" if a.starter else "STANDARD",
    )


def serve(argv: list[str]) -> int:
    parser = _serve_parser()
    a = parser.parse_args(argv)
    from .server import SandboxServer

    try:
        config = config_from_args(a)
    except ValueError as e:  # e.g. a redirect URI Xero would not accept
        parser.error(str(e))
    server = SandboxServer(config, host=a.host, port=a.port, log_level=a.log_level)
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    with server as sb:
        info = {
            "url": sb.url,
            "tenants": [{"tenantId": t.tenant_id, "tenantName": t.tenant_name} for t in sb.tenants],
            "clientId": sb.config.client_id,
        }
        if a.json:
            print(json.dumps(info), flush=True)
        else:
            print(f"xero-sandbox listening on {sb.url}", flush=True)
            for t in sb.tenants:
                print(f"  tenant {t.tenant_id}  {t.tenant_name}", flush=True)
            print(f"  XERO_API_URL={sb.api_url}  client_id={sb.config.client_id}", flush=True)
        while not stop.wait(0.5):
            pass
    return 0


# -- admin client ---------------------------------------------------------------------------------------


def _call(url: str, method: str, path: str, body: Any = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = Request(  # noqa: S310 (operator-given sandbox URL)
        f"{url.rstrip('/')}/__sandbox/{path}",
        data=data,
        method=method,
        headers={"Content-Type": "application/json"},
    )
    try:
        with urlopen(req, timeout=600) as r:  # noqa: S310 (operator-given sandbox URL)
            raw = r.read()
    except HTTPError as e:
        raise SystemExit(f"sandbox answered {e.code}: {e.read().decode(errors='replace')}") from e
    ctype = r.headers.get("Content-Type", "")
    return raw.decode() if "ndjson" in ctype else json.loads(raw)


def _value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def admin(argv: list[str]) -> int:
    cmd, rest = argv[0], argv[1:]
    p = argparse.ArgumentParser(prog=f"xero-elt sandbox {cmd}")
    p.add_argument("--url", default=DEFAULT_URL, help="the running sandbox")
    if cmd in ("truth", "mutate", "offline", "disconnect"):
        p.add_argument("--tenant", required=True)
    if cmd == "revoke":
        p.add_argument("--user", help="only this user's authorisations (default: every user's)")
    if cmd == "truth":
        p.add_argument("--resource", default="Invoices")
        p.add_argument("--jsonl", action="store_true")
    if cmd == "mutate":
        p.add_argument("action")
        p.add_argument("params", nargs="*", help="key=value (values parsed as JSON when possible)")
    if cmd == "clock":
        p.add_argument("--advance", type=float)
        p.add_argument("--speed", type=float)
    if cmd == "stats":
        p.add_argument("--reset", action="store_true")
    if cmd == "fault":
        p.add_argument("kind")
        p.add_argument("--endpoint")
        p.add_argument("--page", type=int)
        p.add_argument("--times", type=int, default=1)
        p.add_argument("--tenant")
        p.add_argument("--seconds", type=float)
    if cmd == "faults":
        p.add_argument("--clear", action="store_true")
    if cmd == "offline":
        p.add_argument("--back", action="store_true", help="bring the organisation back online")
    a = p.parse_args(rest)
    if cmd == "tenants":
        out = _call(a.url, "GET", "tenants")
    elif cmd == "truth":
        out = _call(
            a.url,
            "GET",
            f"tenants/{a.tenant}/truth?resource={a.resource}" + ("&format=jsonl" if a.jsonl else ""),
        )
    elif cmd == "mutate":
        body: dict[str, Any] = {"action": a.action}
        for kv in a.params:
            k, _, v = kv.partition("=")
            body[k] = _value(v)
        out = _call(a.url, "POST", f"tenants/{a.tenant}/mutations", body)
    elif cmd == "clock":
        body = {k: v for k, v in (("advance", a.advance), ("speed", a.speed)) if v is not None}
        out = _call(a.url, "POST" if body else "GET", "clock", body or None)
    elif cmd == "stats":
        out = _call(a.url, "POST", "stats/reset", {}) if a.reset else _call(a.url, "GET", "stats")
    elif cmd == "fault":
        body = {"kind": a.kind, "times": a.times if a.times > 0 else None}
        for k in ("endpoint", "page", "seconds"):
            if getattr(a, k) is not None:
                body[k] = getattr(a, k)
        if a.tenant:
            body["tenant_id"] = a.tenant
        out = _call(a.url, "POST", "faults", body)
    elif cmd == "faults":
        out = _call(a.url, "DELETE" if a.clear else "GET", "faults")
    elif cmd == "disconnect":
        out = _call(a.url, "POST", f"tenants/{a.tenant}/disconnect", {})
    elif cmd == "revoke":
        out = _call(a.url, "POST", "identity/revoke", {"user_id": a.user} if a.user else {})
    else:  # offline
        out = _call(a.url, "POST", f"tenants/{a.tenant}/offline", {"offline": not a.back})
    if isinstance(out, str):
        sys.stdout.write(out)
    else:
        print(json.dumps(out, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "sandbox":  # tolerate being handed the command name too
        argv = argv[1:]
    if argv and argv[0] in SUBCOMMANDS:
        if argv[0] == "serve":
            return serve(argv[1:])
        return admin(argv)
    return serve(argv)


if __name__ == "__main__":
    sys.exit(main())
