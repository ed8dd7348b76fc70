"""Database engine for the app schema (SQLAlchemy 2 on psycopg 3)."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from sqlalchemy import Engine, create_engine


def sqlalchemy_url(database_url: str) -> str:
    """`postgresql://…` (or `postgres://…`) → `postgresql+psycopg://…` (psycopg 3)."""
    parts = urlsplit(database_url)
    scheme = parts.scheme
    if scheme in ("postgresql", "postgres", "postgresql+psycopg2"):
        scheme = "postgresql+psycopg"
    elif scheme != "postgresql+psycopg":
        raise ValueError(f"DATABASE_URL must be a postgresql:// URL, got scheme {parts.scheme!r}")
    return urlunsplit((scheme, parts.netloc, parts.path, parts.query, parts.fragment))


def make_engine(database_url: str, *, pool_size: int = 10, max_overflow: int = 20, **kwargs) -> Engine:
    """An engine on `database_url` using psycopg 3, with pre-ping and a bounded pool."""
    return create_engine(
        sqlalchemy_url(database_url),
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_pre_ping=True,
        pool_timeout=30,
        **kwargs,
    )
