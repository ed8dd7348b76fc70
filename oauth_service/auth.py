"""Caller authentication: the web app's bearer JWT (Supabase).

HS256 with `AUTH_JWT_SECRET`, or asymmetric keys (RS256/ES256/EdDSA) from `AUTH_JWKS_URL`. The
signature, audience and expiry are always checked, and the user id comes from `sub` only.
"""

from __future__ import annotations

import inspect
import logging
import uuid
from dataclasses import dataclass

import jwt
from jwt import PyJWKClient

from oauth_service.settings import Settings

log = logging.getLogger("oauth_service.auth")

ASYMMETRIC_ALGORITHMS = ["RS256", "RS384", "RS512", "ES256", "ES384", "PS256", "EdDSA"]
# How long the fetched JWK set is trusted; a key removed from AUTH_JWKS_URL stops being accepted at
# the latest this long after its removal. Individual keys are never cached beyond the set.
JWKS_LIFESPAN_SECONDS = 600
# A token naming an unknown `kid` refetches the set (a key was added), at most this often (PyJWT's
# cooldown), so that forged tokens cannot flood the JWKS endpoint.
JWKS_MIN_REFETCH_SECONDS = 30


class AuthError(Exception):
    """The request carries no valid bearer JWT; `reason` is safe to show."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Caller:
    user_id: str
    email: str | None = None
    role: str | None = None


class JwtVerifier:
    def __init__(
        self,
        settings: Settings,
        *,
        jwks_lifespan: float = JWKS_LIFESPAN_SECONDS,
        jwks_min_refetch: float = JWKS_MIN_REFETCH_SECONDS,
    ):
        self.audience = settings.auth_jwt_audience
        self.secret = settings.auth_jwt_secret
        self.jwks: PyJWKClient | None = None
        if settings.auth_jwks_url:
            # cache_keys=False: no per-key LRU cache, which would keep a key removed from the set
            # forever; keys live exactly as long as the cached set (at most JWKS_LIFESPAN_SECONDS).
            extra = {}
            if "cooldown_duration" in inspect.signature(PyJWKClient).parameters:  # newer PyJWT only
                extra["cooldown_duration"] = jwks_min_refetch
            self.jwks = PyJWKClient(
                settings.auth_jwks_url,
                cache_keys=False,
                cache_jwk_set=True,
                lifespan=min(jwks_lifespan, JWKS_LIFESPAN_SECONDS),
                timeout=10,
                **extra,
            )
        elif not self.secret:
            raise ValueError("no AUTH_JWT_SECRET or AUTH_JWKS_URL configured")

    def verify(self, authorization: str | None) -> Caller:
        if not authorization:
            raise AuthError("missing bearer token")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError("expected 'Authorization: Bearer <JWT>'")
        token = token.strip()
        options = {"require": ["exp", "sub", "aud"]}
        try:
            if self.jwks is not None:
                try:
                    key = self.jwks.get_signing_key_from_jwt(token).key
                except jwt.PyJWKClientError as exc:
                    log.warning("JWKS key lookup failed: %s", type(exc).__name__)
                    raise AuthError("token signed with an unknown key") from None
                claims = jwt.decode(
                    token,
                    key,
                    algorithms=ASYMMETRIC_ALGORITHMS,
                    audience=self.audience,
                    options=options,
                    leeway=30,
                )
            else:
                claims = jwt.decode(
                    token,
                    self.secret,
                    algorithms=["HS256"],
                    audience=self.audience,
                    options=options,
                    leeway=30,
                )
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired") from None
        except jwt.InvalidAudienceError:
            raise AuthError("token audience not accepted") from None
        except jwt.InvalidSignatureError:
            raise AuthError("token signature invalid") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError(f"token lacks the {exc.claim} claim") from None
        except jwt.PyJWTError:
            raise AuthError("token invalid") from None
        try:
            user_id = str(uuid.UUID(str(claims["sub"])))
        except (ValueError, TypeError):
            raise AuthError("token subject is not a user id") from None
        return Caller(user_id=user_id, email=claims.get("email"), role=claims.get("role"))
