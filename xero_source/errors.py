"""What can go wrong talking to Xero; each message names tenant, endpoint and page."""

from __future__ import annotations


class XeroApiError(RuntimeError):
    """A request that could not be completed."""

    def __init__(self, message: str, *, status: int | None = None):
        super().__init__(message)
        self.status = status


class DailyLimitExceeded(XeroApiError):
    """Xero's per-tenant daily limit is spent, or down to the reserve kept for the web app:
    retrying today only burns more of nothing. The message says when it frees up."""


class XeroRequestRefused(XeroApiError):
    """Xero refused the request itself: a 401 although the token was just renewed, a 403 (the
    organisation withdrew access or a scope is missing) or a 404. No retry changes the answer."""
