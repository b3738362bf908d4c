""" "Continue with Waldur": the bridge as the homeserver's OpenID Connect provider.

A person signs in with their Waldur account (password or API token, checked with Waldur) and
the homeserver logs them into their puppet, whose rooms are already there. Pieces:

- ``settings``     ``bridge.signin``, read and checked
- ``keys``         the RS256 signing keys, made at first start and kept in the database
- ``server``       authlib's authorization server: clients, codes, PKCE, ID tokens
- ``guards``       limits of failed sign-ins, the form's CSRF token
- ``credentials``  the check with Waldur
- ``pages``        the HTML a person sees
- ``app``          the HTTP endpoints under ``/oidc``
"""

from __future__ import annotations

from .app import SigninService, mount_signin
from .settings import SigninSettings, read_settings

__all__ = ["SigninService", "SigninSettings", "mount_signin", "read_settings"]
