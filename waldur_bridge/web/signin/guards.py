"""Rate limits of failed sign-ins, and the CSRF token of the sign-in form.

Waldur 7.x locks a username out for 10 minutes after 4 failed password sign-ins from one
address. Every sign-in through the bridge comes from the bridge's address, so the bridge stops
a username at 3 failures in 10 minutes: otherwise anyone could lock a colleague out of Waldur
itself by typing wrong passwords here. Failures are also limited per client address (behind
``trusted_proxies``, the address in ``X-Forwarded-For``), so nobody guesses tokens or
passwords at Waldur's expense.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable

from ..provisioning import SlidingWindowLimiter

WINDOW = 600.0
USERNAME_FAILURES = 3
ADDRESS_FAILURES = 10
CSRF_TTL = 1800


class FailureLimits:
    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.by_username = SlidingWindowLimiter(USERNAME_FAILURES, WINDOW, clock=clock)
        self.by_address = SlidingWindowLimiter(ADDRESS_FAILURES, WINDOW, clock=clock)

    @staticmethod
    def _username_key(username: str) -> str:
        # Stricter than Waldur (which counts exact spellings): every spelling counts together.
        return username.strip().casefold()

    def wait(self, address: str, username: str | None = None) -> float:
        """0 when an attempt may go to Waldur, else the seconds until one may."""
        wait = self.by_address.retry_after(address)
        if username:
            wait = max(wait, self.by_username.retry_after(self._username_key(username)))
        return wait

    def failed(self, address: str, username: str | None = None) -> None:
        self.by_address.hit(address)
        if username:
            self.by_username.hit(self._username_key(username))


class CsrfTokens:
    """A token bound to one browser (a random cookie) and one authorization request.

    ``<issued>.<hmac(browser, issued, request)>``: a form posted from another site lacks the
    browser's cookie (SameSite=Lax), a form for another request does not match, and old ones
    expire.
    """

    def __init__(
        self, secret: bytes, *, ttl: int = CSRF_TTL, clock: Callable[[], float] = time.time
    ) -> None:
        self._key = hashlib.sha256(b"waldur-bridge sign-in csrf\x00" + secret).digest()
        self.ttl = ttl
        self.clock = clock

    def _mac(self, browser: str, issued: int, request: str) -> str:
        message = f"{browser}\x00{issued}\x00{request}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def issue(self, browser: str, request: str) -> str:
        issued = int(self.clock())
        return f"{issued}.{self._mac(browser, issued, request)}"

    def check(self, token: str, browser: str, request: str) -> bool:
        issued_text, _, mac = token.partition(".")
        if not browser or not issued_text.isdigit() or not mac:
            return False
        issued = int(issued_text)
        if not 0 <= self.clock() - issued <= self.ttl:
            return False
        return hmac.compare_digest(mac, self._mac(browser, issued, request))
