"""The /__sandbox admin API, inspection (stats), and the CLI (server process + admin subcommands)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import requests

from xero_sandbox.cli import main
from xero_sandbox.pytest_plugin import sandbox_token


def test_tenants_clock_consent_and_tokens(xero_sandbox_server) -> None:
    sb = xero_sandbox_server
    admin = f"{sb.url}/__sandbox"
    tenants = requests.get(f"{admin}/tenants", timeout=10).json()
    assert [(t["tenantId"], t["tenantName"]) for t in tenants] == [
        (t.tenant_id, t.tenant_name) for t in sb.tenants
    ]
    c0 = requests.get(f"{admin}/clock", timeout=10).json()
    c1 = requests.post(f"{admin}/clock", json={"advance": 3600}, timeout=10).json()
    assert c1["nowMs"] - c0["nowMs"] >= 3_600_000
    assert requests.post(f"{admin}/clock", json={"speed": 0}, timeout=10).status_code == 400
    assert requests.post(f"{admin}/clock", json={"advance": -5}, timeout=10).status_code == 400
    assert requests.post(f"{admin}/clock", json={"speed": 60}, timeout=10).json()["speed"] == 60
    consent = requests.post(
        f"{admin}/consent", json={"tenants": [sb.tenants[1].tenant_id]}, timeout=10
    ).json()
    assert consent["tenants"] == [sb.tenants[1].tenant_id]
    tok = sandbox_token(sb)
    conns = requests.get(
        sb.connections_url, headers={"Authorization": f"Bearer {tok['access_token']}"}, timeout=10
    ).json()
    assert [c["tenantId"] for c in conns] == [sb.tenants[1].tenant_id]
    assert requests.get(f"{admin}/identity", timeout=10).json()["connections"]
    assert requests.post(f"{admin}/tokens/expire", timeout=10).json()["expired"] >= 1
    r = requests.get(
        sb.connections_url, headers={"Authorization": f"Bearer {tok['access_token']}"}, timeout=10
    )
    assert r.status_code == 401
    assert requests.get(f"{admin}/tenants/unknown/truth", timeout=10).status_code == 404
    assert (
        requests.get(
            f"{admin}/tenants/{sb.tenants[0].tenant_id}/truth", params={"resource": "Widgets"}, timeout=10
        ).status_code
        == 400
    )


def test_stats_count_calls_and_bytes_per_tenant_and_endpoint(xero_sandbox_server) -> None:
    sb = xero_sandbox_server
    tok = sandbox_token(sb)
    t0, t1 = (t.tenant_id for t in sb.tenants)
    sizes = []
    for tid, path in ((t0, "Invoices"), (t0, "Invoices"), (t0, "Contacts"), (t1, "Invoices/unknown-id")):
        r = requests.get(
            f"{sb.api_url}/{path}",
            timeout=10,
            headers={
                "Authorization": f"Bearer {tok['access_token']}",
                "xero-tenant-id": tid,
                "Accept": "application/json",
            },
        )
        sizes.append(len(r.content))
    stats = requests.get(f"{sb.url}/__sandbox/stats", timeout=10).json()
    rows = {(r["tenantId"], r["endpoint"]): r for r in stats["endpoints"]}
    assert rows[(t0, "Invoices")]["calls"] == 2 and rows[(t0, "Invoices")]["bytes"] == sizes[0] + sizes[1]
    assert rows[(t0, "Contacts")]["status"] == {"200": 1}
    assert rows[(t1, "Invoices/{id}")]["status"] == {"404": 1}  # not a GUID: looked up as a number
    assert stats["tenants"][t0]["calls"] == 3 and stats["tenants"][t0]["bytes"] == sum(sizes[:3])
    assert stats["tenants"][t0]["limitsRemaining"]["minute"] == 57
    assert stats["totalBytes"] == sum(sizes)
    after = requests.post(f"{sb.url}/__sandbox/stats/reset", json={}, timeout=10).json()
    assert after["totalCalls"] == 0 and after["tenants"][t0]["limitsRemaining"]["minute"] == 60
    assert sb.stats()["totalCalls"] == 0


@pytest.fixture
def cli_server():
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "xero_sandbox",
            "--port",
            "0",
            "--tenants",
            "2",
            "--invoices",
            "12",
            "--seed",
            "5",
            "--json",
            "--no-rate-limits",
        ],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        yield json.loads(proc.stdout.readline())
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def run(capsys, *argv: str) -> object:
    assert main(list(argv)) == 0
    out = capsys.readouterr().out
    try:
        return json.loads(out)
    except json.JSONDecodeError:
        return out  # JSON lines


def test_cli_serves_and_drives_a_sandbox(cli_server, capsys) -> None:
    url = cli_server["url"]
    tid = cli_server["tenants"][0]["tenantId"]
    assert url.startswith("http://127.0.0.1:") and len(cli_server["tenants"]) == 2
    tenants = run(capsys, "tenants", "--url", url)
    assert [t["tenantId"] for t in tenants] == [t["tenantId"] for t in cli_server["tenants"]]
    before = run(capsys, "truth", "--url", url, "--tenant", tid)
    created = run(
        capsys,
        "mutate",
        "--url",
        url,
        "--tenant",
        tid,
        "create_invoice",
        "status=AUTHORISED",
        'lines=[{"description": "CLI", "quantity": 2, "unit_amount": "10.00"}]',
    )
    assert created["Total"] > 20 and created["LineItems"][0]["Description"] == "CLI"
    after = run(capsys, "truth", "--url", url, "--tenant", tid)
    assert after["count"] == before["count"] + 1
    jsonl = run(capsys, "sandbox", "truth", "--url", url, "--tenant", tid, "--jsonl")
    assert len(jsonl.strip().splitlines()) == after["count"]
    clock = run(capsys, "clock", "--url", url, "--advance", "86400")
    assert clock["nowMs"] >= 1_767_312_000_000
    rule = run(capsys, "fault", "--url", url, "500", "--endpoint", "Invoices", "--page", "3")
    assert rule["kind"] == "500" and rule["page"] == 3
    assert run(capsys, "faults", "--url", url, "--clear")["rules"] == []
    assert run(capsys, "offline", "--url", url, "--tenant", tid)["offline"] is True
    assert run(capsys, "stats", "--url", url)["totalCalls"] == 0


def test_cli_builds_the_config_from_flags() -> None:
    from xero_sandbox.cli import _serve_parser, config_from_args

    a = _serve_parser().parse_args(
        [
            "--tenants",
            "3",
            "--invoices",
            "1000000",
            "--seed",
            "9",
            "--starter",
            "--client-id",
            "cid",
            "--client-secret",
            "sec",
            "--redirect-uri",
            "http://localhost:1/cb",
            "--clock-speed",
            "60",
            "--webhook-url",
            "http://127.0.0.1:9/h",
            "--webhook-key",
            "k",
        ]
    )
    cfg = config_from_args(a)
    assert (cfg.tenants, cfg.invoices_per_tenant, cfg.seed) == (3, 1_000_000, 9)
    assert cfg.limits.per_day == 1000 and cfg.tier == "STARTER" and cfg.rate_limits
    assert cfg.redirect_uris == ["http://localhost:1/cb"] and cfg.clock_speed == 60
    assert (cfg.client_id, cfg.client_secret, cfg.webhook_key) == ("cid", "sec", "k")
    off = config_from_args(_serve_parser().parse_args(["--no-rate-limits"]))
    assert off.effective_limits().per_minute is None and off.effective_limits().concurrent is None


def test_cli_switches_limits_off_one_by_one_and_sets_every_fault_rate() -> None:
    from xero_sandbox.cli import _serve_parser, config_from_args

    def cfg(*argv: str):
        return config_from_args(_serve_parser().parse_args(list(argv)))

    default = cfg().limits
    assert (default.per_minute, default.per_day, cfg("--starter").limits.per_day) == (60, 5000, 1000)
    only_day_off = cfg("--per-day", "off").limits
    assert only_day_off.per_day is None and (only_day_off.per_minute, only_day_off.concurrent) == (60, 5)
    limits = cfg("--per-minute", "off", "--concurrent", "OFF", "--app-per-minute", "50", "--starter").limits
    assert (limits.per_minute, limits.concurrent) == (None, None)
    assert (limits.app_per_minute, limits.per_day) == (50, 1000)
    faults = cfg(
        "--truncate-rate", "0.2", "--malformed-rate", "0.1", "--drop-rate", "0.05",
        "--slow-rate", "0.3", "--slow-seconds", "0.5", "--error-rate", "0.01",
    ).faults
    assert (faults.truncate_rate, faults.malformed_rate, faults.drop_rate) == (0.2, 0.1, 0.05)
    assert (faults.slow_rate, faults.slow_seconds, faults.error_rate) == (0.3, 0.5, 0.01)
    for bad in ("0", "-3", "lots"):
        with pytest.raises(SystemExit):
            _serve_parser().parse_args(["--per-minute", bad])


def test_cli_refuses_a_redirect_uri_xero_would_not_register(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--port", "0", "--redirect-uri", "http://app.example/cb"])
    assert exc.value.code == 2 and "https" in capsys.readouterr().err


def test_cli_disconnect_and_revoke(cli_server, capsys) -> None:
    from urllib.parse import parse_qs, urlsplit

    url = cli_server["url"]
    t0, t1 = (t["tenantId"] for t in cli_server["tenants"])
    redirect = "http://127.0.0.1:1/cb"
    r = requests.get(
        f"{url}/identity/connect/authorize",
        params={"response_type": "code", "client_id": cli_server["clientId"], "redirect_uri": redirect,
                "scope": "offline_access accounting.invoices.read"},
        allow_redirects=False,
        timeout=10,
    )
    code = parse_qs(urlsplit(r.headers["Location"]).query)["code"][0]
    auth = (cli_server["clientId"], "sandbox-client-secret")
    tok = requests.post(
        f"{url}/connect/token",
        data={"grant_type": "authorization_code", "code": code, "redirect_uri": redirect},
        auth=auth,
        timeout=10,
    ).json()
    bearer = {"Authorization": f"Bearer {tok['access_token']}"}

    def connections() -> list[str]:
        return [c["tenantId"] for c in requests.get(f"{url}/connections", headers=bearer, timeout=10).json()]

    assert sorted(connections()) == sorted([t0, t1])
    assert run(capsys, "disconnect", "--url", url, "--tenant", t0) == {"tenantId": t0, "removed": 1}
    assert connections() == [t1]
    r = requests.get(f"{url}/api.xro/2.0/Invoices", headers={**bearer, "xero-tenant-id": t0}, timeout=10)
    assert r.status_code == 403
    assert run(capsys, "revoke", "--url", url, "--user", "nobody") == {"revoked": 0}
    assert run(capsys, "revoke", "--url", url) == {"revoked": 1}
    assert requests.get(f"{url}/connections", headers=bearer, timeout=10).status_code == 401
    refreshed = requests.post(
        f"{url}/connect/token",
        data={"grant_type": "refresh_token", "refresh_token": tok["refresh_token"]},
        auth=auth,
        timeout=10,
    )
    assert refreshed.status_code == 400 and refreshed.json()["error"] == "invalid_grant"
