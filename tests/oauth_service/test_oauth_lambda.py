"""The Lambda entry point (Mangum) serves the same app behind API Gateway."""

import json
import uuid

import pytest
from oauth_testlib import api_gateway_event, audit_rows, user_jwt

import oauth_service.lambda_handler as lambda_handler
from oauth_service.settings import SettingsError


@pytest.fixture
def lambda_env(monkeypatch, service_env):
    for key, value in service_env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(lambda_handler, "_adapter", None)
    yield
    monkeypatch.setattr(lambda_handler, "_adapter", None)


def test_lambda_handler_serves_health_and_initiate(lambda_env, engine):
    health = lambda_handler.handler(api_gateway_event("GET", "/healthz"), None)
    assert health["statusCode"] == 200
    assert json.loads(health["body"])["database"] == "ok"

    user = str(uuid.uuid4())
    r = lambda_handler.handler(
        api_gateway_event("POST", "/xero/auth/initiate", {"authorization": f"Bearer {user_jwt(user)}"}), None
    )
    assert r["statusCode"] == 200
    assert json.loads(r["body"])["authorizationUrl"]
    initiated = audit_rows(engine, "xero_connect_initiated", user_id=user)
    assert [str(a.ip_address) for a in initiated] == ["203.0.113.9"]

    denied = lambda_handler.handler(api_gateway_event("GET", "/xero/connections"), None)
    assert denied["statusCode"] == 401


def test_lambda_refuses_without_a_dedicated_login_or_in_demo_mode(lambda_env, monkeypatch):
    monkeypatch.delenv("APP_DATABASE_URL")
    with pytest.raises(SettingsError, match="APP_DATABASE_URL is required"):
        lambda_handler.handler(api_gateway_event("GET", "/healthz"), None)
    monkeypatch.setenv("DEMO_MODE", "1")  # the sandbox URLs are loopback: only the Lambda refuses it
    with pytest.raises(SettingsError, match="never on Lambda"):
        lambda_handler.handler(api_gateway_event("GET", "/healthz"), None)
    assert lambda_handler._adapter is None


def test_the_lambda_template_routes_every_route_the_service_serves(lambda_env):
    """deploy/aws/oauth-service.yaml (API Gateway) must route exactly what the app serves."""
    from pathlib import Path

    from cfnlint.decode import decode  # reads CloudFormation's short tags (!Ref, !Sub, !If ...)
    from fastapi.routing import APIRoute
    from starlette.routing import Route

    path = Path(__file__).parents[2] / "deploy" / "aws" / "oauth-service.yaml"
    template, errors = decode(str(path))
    assert not errors, errors
    function = template["Resources"]["OAuthFunction"]["Properties"]
    routed = {(e["Properties"]["Method"], e["Properties"]["Path"]) for e in function["Events"].values()
              if e["Properties"]["Method"] != "OPTIONS"}
    app = lambda_handler._get_adapter().app
    served = {(method, route.path) for route in app.routes if isinstance(route, APIRoute | Route)
              for method in (route.methods or ()) if method not in ("HEAD", "OPTIONS")}
    assert routed == served
    # Every route is on the stack's own HTTP API (the one with access logs and throttling).
    assert {str(e["Properties"]["ApiId"]["Ref"]) for e in function["Events"].values()} == {"HttpApi"}
    metadata = template["Resources"]["OAuthFunction"]["Metadata"]
    assert metadata["Dockerfile"] == "deploy/lambda/Dockerfile"
    assert (path.parent / metadata["DockerContext"] / metadata["Dockerfile"]).is_file()
    # Secrets are read at run time: the environment holds secret ids (V_SECRET_ID=<id>#<json key>), never
    # a value nor a deploy-time {{resolve:secretsmanager:...}} (visible in the function's configuration).
    variables = function["Environment"]["Variables"]
    for secret in ("TOKEN_ENCRYPTION_KEY", "XERO_CLIENT_ID", "XERO_CLIENT_SECRET", "XERO_WEBHOOK_KEY",
                   "AUTH_JWT_SECRET", "APP_DATABASE_URL", "DATABASE_URL"):
        assert secret not in variables
    assert "{{resolve:" not in path.read_text()
    token_key = {"Fn::Sub": "${TokenKeysSecretName}#token_encryption_key"}
    assert variables["TOKEN_ENCRYPTION_KEY_SECRET_ID"] == token_key
    for name, key in (("XERO_CLIENT_ID", "client_id"), ("XERO_CLIENT_SECRET", "client_secret"),
                      ("XERO_WEBHOOK_KEY", "webhook_key")):
        assert variables[f"{name}_SECRET_ID"] == {"Fn::Sub": f"${{XeroCredentialsSecretName}}#{key}"}
    # Both database URLs are the service's own login: never the owner's, never another component's.
    service_login = {"Fn::ImportValue": {"Fn::Sub": "${DatabaseStack}-ServiceLoginSecretArn"}}
    assert variables["APP_DATABASE_URL_SECRET_ID"] == variables["DATABASE_URL_SECRET_ID"] == service_login
    # Exactly one way to check the web app's JWTs: the JWKS URL when given, else the HS256 secret.
    use_jwks, no_secret, secret = variables["AUTH_JWT_SECRET_SECRET_ID"]["Fn::If"]
    assert (use_jwks, no_secret) == ("UseJwks", {"Ref": "AWS::NoValue"})
    assert secret == {"Fn::Sub": "${TokenKeysSecretName}#auth_jwt_secret"}
    no_value = {"Ref": "AWS::NoValue"}
    assert variables["AUTH_JWKS_URL"]["Fn::If"] == ["UseJwks", {"Ref": "AuthJwksUrl"}, no_value]
    assert template["Conditions"]["UseJwks"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "AuthJwksUrl"}, ""]}]}
