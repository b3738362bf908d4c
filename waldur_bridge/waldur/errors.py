"""Errors raised by the Waldur REST client.

Every error carries the URL path it concerns (never the query's secrets, never the token) so that
an operator can tell which call failed from the log line alone.
"""

from __future__ import annotations

__all__ = [
    "WaldurAuthError",
    "WaldurError",
    "WaldurNotFound",
    "WaldurProtocolError",
    "WaldurRequestError",
    "WaldurUnavailable",
]


class WaldurError(Exception):
    """Base class: a Waldur call failed and returned no usable answer."""

    def __init__(
        self, message: str, *, path: str | None = None, status: int | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.path = path
        self.status = status

    def __str__(self) -> str:
        where = []
        if self.path is not None:
            where.append(self.path)
        if self.status is not None:
            where.append(f"HTTP {self.status}")
        return f"{self.message} ({', '.join(where)})" if where else self.message


class WaldurAuthError(WaldurError):
    """Waldur refused the token (401) or the account lacks a permission (403)."""

    @classmethod
    def for_status(cls, status: int, detail: str, *, path: str) -> WaldurAuthError:
        said = f' Waldur said: "{detail}".' if detail else ""
        if status == 403:
            message = (
                "Waldur denied the bridge's account access to this resource."
                f"{said} The bridge needs a staff user (or a support user for read-only use): "
                "non-staff accounts see only part of the users, grants and events."
            )
        else:
            message = (
                "Waldur rejected the API token."
                f"{said} Waldur tokens expire after the user's token_lifetime (by default 1 hour "
                "after the last login or use). For a service account, a staff user should set "
                "token_lifetime to null on /api/users/<uuid>/ and issue a fresh token; also check "
                "that the account is active and the token was copied without spaces."
            )
        return cls(message, path=path, status=status)


class WaldurUnavailable(WaldurError):
    """Waldur could not be reached or kept failing (connection error, timeout, 5xx, 429)."""


class WaldurNotFound(WaldurError):
    """The object does not exist (404), or is not visible to the bridge's account."""


class WaldurRequestError(WaldurError):
    """Waldur rejected the request itself (a 4xx other than 401/403/404/429), e.g. a bad field."""

    def __init__(
        self, message: str, *, path: str | None = None, status: int | None = None, detail: str = ""
    ) -> None:
        super().__init__(message, path=path, status=status)
        self.detail = detail


class WaldurProtocolError(WaldurError):
    """Waldur answered, but not in a shape the bridge can trust.

    Unparseable JSON, wrong types, missing fields, pagination that does not add up, or a filter
    that was not honoured. The answer is unusable as a whole: callers must not act on part of it.
    """
