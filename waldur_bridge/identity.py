"""Matrix IDs for Waldur users: puppet localparts and templates. Pure functions."""

from __future__ import annotations

import re

# The Matrix spec's historical user ID grammar, which every homeserver accepts.
_LOCALPART_SAFE = re.compile(r"[a-z0-9.\-]")
_MXID = re.compile(r"^@[a-z0-9._=\-/+]+:[A-Za-z0-9.\-]+(:\d+)?$")
MAX_MXID_LENGTH = 255


def escape_localpart(value: str) -> str:
    """Map any string to a valid localpart without collisions.

    Follows the Matrix spec's suggested mapping: uppercase becomes `_` + lowercase, `_` becomes
    `__`, and every other character outside [a-z0-9.-] becomes `=xx` per UTF-8 byte. The mapping
    is injective, so two different Waldur usernames never share a puppet.
    """
    out = []
    for char in value:
        if _LOCALPART_SAFE.fullmatch(char):
            out.append(char)
        elif char == "_":
            out.append("__")
        elif "A" <= char <= "Z":
            out.append("_" + char.lower())
        else:
            out.extend(f"={byte:02x}" for byte in char.encode("utf-8"))
    return "".join(out)


def is_valid_mxid(mxid: str) -> bool:
    return bool(_MXID.match(mxid)) and len(mxid.encode()) <= MAX_MXID_LENGTH


def puppet_mxid(
    template: str, domain: str, *, username: str, user_uuid: str, source: str = "username"
) -> str:
    """The puppet's Matrix ID. Falls back to the UUID when the username gives no valid ID."""
    userid = escape_localpart(username) if source == "username" and username else user_uuid
    mxid = f"@{template.format(userid=userid)}:{domain}"
    if not is_valid_mxid(mxid):
        mxid = f"@{template.format(userid=user_uuid)}:{domain}"
    return mxid


def template_mxid(template: str, *, username: str, user_uuid: str, email: str = "") -> str | None:
    """The real account of a Waldur user where Waldur and the homeserver share accounts.

    Returns None when the template needs a value the user lacks or the result is not a valid ID,
    so the user is skipped (and reported) rather than mapped onto someone else's account.
    """
    email_local = email.partition("@")[0] if email else ""
    needed = {"username": username, "uuid": user_uuid, "email_local": email_local}
    for key, value in needed.items():
        if "{" + key + "}" in template and not value:
            return None
    mxid = template.format(
        username=username.lower(), uuid=user_uuid, email_local=email_local.lower()
    )
    return mxid if is_valid_mxid(mxid) else None


def puppet_regex(template: str, domain: str) -> str:
    """A regex that matches every puppet ID the template can produce (for the planner)."""
    placeholder = "WALDURUSERIDPLACEHOLDER"
    escaped = re.escape(f"@{template.format(userid=placeholder)}:{domain}")
    return "^" + escaped.replace(placeholder, ".+") + "$"
