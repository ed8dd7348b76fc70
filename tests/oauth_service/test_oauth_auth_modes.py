"""Caller authentication with JWKS (asymmetric keys), and the explicit demo mode the demo runs."""

import base64
import hashlib
import hmac
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import jwt
import psutil
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from oauth_testlib import APP_RETURN_URL, free_port, user_jwt

from oauth_service.auth import AuthError, JwtVerifier
from oauth_service.server import ServiceServer
from oauth_service.settings import Settings, SettingsError


def public_jwk(key, kid: str) -> dict:
    """The public half of `key` as a JWKS entry."""
    alg = jwt.algorithms.RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else jwt.algorithms.ECAlgorithm
    out = json.loads(alg.to_jwk(key.public_key()))
    out.update({"kid": kid, "use": "sig"})
    return out


def serve_jwks(published: dict, fetches: list | None = None) -> ThreadingHTTPServer:
    """A loopback JWKS endpoint serving `published` as it is at each request (tests change it)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            if fetches is not None:
                fetches.append(time.monotonic())
            body = json.dumps(published).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def jwks_server():
    """A loopback JWKS endpoint like Supabase's /auth/v1/.well-known/jwks.json."""
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    server = serve_jwks({"keys": [public_jwk(rsa_key, "rsa-1"), public_jwk(ec_key, "ec-1")]})
    yield {
        "url": f"http://127.0.0.1:{server.server_port}/auth/v1/.well-known/jwks.json",
        "rsa": rsa_key,
        "ec": ec_key,
    }
    server.shutdown()
    server.server_close()


def signed(key, kid: str, alg: str, **claims) -> str:
    now = int(time.time())
    payload = {"sub": str(uuid.uuid4()), "aud": "authenticated", "exp": now + 300, "iat": now, **claims}
    return jwt.encode(payload, key, algorithm=alg, headers={"kid": kid})


def test_jwks_verifier_accepts_keys_it_publishes_and_nothing_else(jwks_server, service_env):
    env = {k: v for k, v in service_env.items() if k != "AUTH_JWT_SECRET"}
    settings = Settings.from_env({**env, "AUTH_JWKS_URL": jwks_server["url"]})
    verifier = JwtVerifier(settings)
    for key, kid, alg in ((jwks_server["rsa"], "rsa-1", "RS256"), (jwks_server["ec"], "ec-1", "ES256")):
        user = str(uuid.uuid4())
        assert verifier.verify(f"Bearer {signed(key, kid, alg, sub=user)}").user_id == user
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cases = {
        "token signature invalid": signed(stranger, "rsa-1", "RS256"),
        "token signed with an unknown key": signed(stranger, "rsa-9", "RS256"),
        "token expired": signed(jwks_server["rsa"], "rsa-1", "RS256", exp=int(time.time()) - 600),
        "token audience not accepted": signed(jwks_server["rsa"], "rsa-1", "RS256", aud="anon"),
    }
    for reason, token in cases.items():
        with pytest.raises(AuthError) as err:
            verifier.verify(f"Bearer {token}")
        assert err.value.reason == reason


def hs256(secret: bytes, kid: str, **claims) -> str:
    """An HS256 JWT made by hand (PyJWT itself refuses to use a PEM key as an HMAC secret)."""
    now = int(time.time())
    payload = {"sub": str(uuid.uuid4()), "aud": "authenticated", "exp": now + 300, "iat": now, **claims}

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")

    signing_input = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode()) + "." + b64(
        json.dumps(payload).encode()
    )
    return signing_input + "." + b64(hmac.new(secret, signing_input.encode("ascii"), hashlib.sha256).digest())


def test_jwks_verifier_refuses_hs256_signed_with_the_published_public_key(jwks_server, service_env):
    """The classic algorithm-confusion attack: the public key anyone can fetch from AUTH_JWKS_URL, as
    PEM, used as an HS256 secret. A verifier that let the token pick its algorithm would accept it."""
    env = {k: v for k, v in service_env.items() if k != "AUTH_JWT_SECRET"}
    verifier = JwtVerifier(Settings.from_env({**env, "AUTH_JWKS_URL": jwks_server["url"]}))
    published = httpx.get(jwks_server["url"]).json()["keys"][0]
    public_key = jwt.algorithms.RSAAlgorithm.from_jwk(json.dumps(published))
    pems = {
        fmt: public_key.public_bytes(serialization.Encoding.PEM, fmt)
        for fmt in (serialization.PublicFormat.SubjectPublicKeyInfo, serialization.PublicFormat.PKCS1)
    }
    # the forgery is well formed: made with an ordinary secret, HS256 verification accepts it
    ordinary = b"s" * 32
    assert jwt.decode(hs256(ordinary, "rsa-1"), ordinary, algorithms=["HS256"], audience="authenticated")
    for pem in pems.values():
        for secret in (pem, pem.strip()):
            with pytest.raises(AuthError) as err:
                verifier.verify(f"Bearer {hs256(secret, published['kid'])}")
            assert err.value.reason == "token invalid"


def demo_env(service_env: dict) -> dict:
    """What the demo sets: DEMO_MODE=1, the sandbox's URLs, its own secrets; no APP_DATABASE_URL."""
    env = {k: service_env[k] for k in ("DATABASE_URL", "TOKEN_ENCRYPTION_KEY", "AUTH_JWT_SECRET")}
    env.update({k: v for k, v in service_env.items() if k.startswith("XERO_") and k.endswith("_URL")})
    env["DEMO_MODE"] = "1"
    return env


def test_demo_mode_serves_on_loopback_only(service_env):
    env = {**{k: v for k, v in os.environ.items() if k != "APP_DATABASE_URL"}, **demo_env(service_env)}
    port = free_port()
    command = [sys.executable, "-m", "oauth_service", "serve", "--port", str(port)]
    everywhere = "0.0.0.0"  # noqa: S104 - what demo mode must refuse
    refused = subprocess.run(
        [*command, "--host", everywhere], env=env, capture_output=True, text=True, timeout=60
    )
    assert refused.returncode == 2 and "DEMO_MODE=1 listens on loopback only" in refused.stderr
    with pytest.raises(SettingsError, match="loopback only"):
        ServiceServer(Settings.from_env(demo_env(service_env)), host=everywhere, port=port).start()

    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).json()["demoMode"]:
                    break
            except httpx.HTTPError:
                assert proc.poll() is None and time.monotonic() < deadline, "the demo service did not start"
                time.sleep(0.2)
        listening = {
            c.laddr.ip
            for c in psutil.Process(proc.pid).net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN
        }
        assert listening == {"127.0.0.1"}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_demo_mode_flow_as_the_demo_drives_it(sandbox, tenant_ids, migrated_database_url, service_env):
    """DEMO_MODE=1, no redirect URI given: the server's own callback URL is used; a requests.Session
    drives initiate → authorize (302) → callback (302 to APP_RETURN_URL?connected=2)."""
    settings = Settings.from_env(demo_env(service_env))
    assert settings.demo_mode and settings.xero_redirect_uri is None
    with ServiceServer(settings, port=free_port()) as service:
        assert service.settings.xero_redirect_uri == f"{service.url}/xero/auth/callback"
        assert httpx.get(f"{service.url}/healthz").json()["demoMode"] is True
        http = requests.Session()
        token = user_jwt(str(uuid.uuid4()))
        r = http.post(f"{service.url}/xero/auth/initiate", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200
        consent = http.get(
            r.json()["authorizationUrl"] + "&sandbox_tenants=" + ",".join(tenant_ids[:2]),
            allow_redirects=False,
        )
        assert consent.status_code == 302
        callback = http.get(consent.headers["Location"], allow_redirects=False)
        assert callback.status_code == 302
        assert callback.headers["Location"] == f"{settings.app_return_url}?connected=2"
        assert settings.app_return_url != APP_RETURN_URL


def test_a_key_removed_from_the_jwks_stops_being_accepted_once_the_set_is_refetched(service_env):
    """No per-key cache outlives the JWK set: after the cached set expires (lifespan, at most 600 s in
    production, 1 s here) and is fetched again, a removed key's tokens are rejected."""
    old_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    new_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    published = {"keys": [public_jwk(old_key, "old"), public_jwk(new_key, "new")]}
    fetches: list[float] = []
    server = serve_jwks(published, fetches)
    try:
        env = {k: v for k, v in service_env.items() if k != "AUTH_JWT_SECRET"}
        env["AUTH_JWKS_URL"] = f"http://127.0.0.1:{server.server_port}/jwks.json"
        verifier = JwtVerifier(Settings.from_env(env), jwks_lifespan=1)
        user = str(uuid.uuid4())
        assert verifier.verify(f"Bearer {signed(old_key, 'old', 'RS256', sub=user)}").user_id == user
        assert verifier.verify(f"Bearer {signed(new_key, 'new', 'RS256', sub=user)}").user_id == user

        published["keys"] = [public_jwk(new_key, "new")]  # the old key is rotated out (e.g. compromised)
        time.sleep(1.2)  # the cached set expires
        with pytest.raises(AuthError) as err:
            verifier.verify(f"Bearer {signed(old_key, 'old', 'RS256', sub=user)}")
        assert err.value.reason == "token signed with an unknown key"
        assert verifier.verify(f"Bearer {signed(new_key, 'new', 'RS256', sub=user)}").user_id == user
        assert len(fetches) >= 2
        # a flood of tokens naming unknown keys does not become a flood of JWKS fetches
        before = len(fetches)
        for i in range(20):
            with pytest.raises(AuthError):
                verifier.verify(f"Bearer {signed(old_key, f'forged-{i}', 'RS256')}")
        assert len(fetches) - before <= 2
    finally:
        server.shutdown()
        server.server_close()
