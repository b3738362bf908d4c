"""The pages a person sees: plain HTML that works without JavaScript, one escaping rule.

Every text that comes from outside (the site name, a message, the request being carried) goes
through ``html.escape``; nothing is inserted raw.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

# Security headers of every page: no framing (clickjacking of the password form), no scripts,
# no referrer (the URL carries the request).
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Pragma": "no-cache",
}

_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;background:#f3f5f8;
color:#1b1f24;margin:0;display:flex;min-height:100vh;padding:1.5rem 1rem;box-sizing:border-box}
main{background:#fff;border-radius:12px;box-shadow:0 2px 12px rgba(0,0,0,.08);
padding:2rem 2.25rem;width:100%;max-width:24rem;box-sizing:border-box;margin:auto}
h1{font-size:1.4rem;margin:0 0 .25rem}
p.lead{color:#505a66;margin:0 0 1.5rem}
label{display:block;font-weight:600;margin:1rem 0 .35rem}
input[type=text],input[type=password]{width:100%;box-sizing:border-box;padding:.6rem .7rem;
font-size:1rem;border:1px solid #9aa4b0;border-radius:6px}
input:focus,button:focus{outline:3px solid #7aa7ff;outline-offset:1px}
button{margin-top:1.25rem;width:100%;padding:.7rem;font-size:1rem;font-weight:600;
color:#fff;background:#1f5fd1;border:0;border-radius:6px;cursor:pointer}
.error{background:#fdecec;color:#8a1c1c;border:1px solid #f2b8b8;border-radius:6px;
padding:.6rem .8rem;margin:0 0 1rem}
.or{text-align:center;color:#6b7480;margin:1.5rem 0 0;border-top:1px solid #e3e7ec;
padding-top:1rem}
small{display:block;color:#6b7480;margin-top:.35rem}
"""


def _document(title: str, body: str) -> str:
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body><main>{body}</main></body></html>\n"
    )


@dataclass(frozen=True)
class SigninForm:
    site_name: str
    methods: Sequence[str]
    # The authorization request being answered (its query string) and the CSRF token bound
    # to it; both go back in hidden fields.
    request: str
    csrf: str
    action: str
    error: str | None = None
    username: str = ""
    # Which form had the error (its fields get aria-invalid and the focus).
    failed_method: str | None = None


def _hidden(form: SigninForm, method: str) -> str:
    return (
        f'<input type="hidden" name="request" value="{escape(form.request)}">'
        f'<input type="hidden" name="csrf" value="{escape(form.csrf)}">'
        f'<input type="hidden" name="method" value="{method}">'
    )


def signin_page(form: SigninForm) -> str:
    site = escape(form.site_name)
    parts = [
        f"<h1>Sign in with {site}</h1>",
        f'<p class="lead">Use your {site} account to open your project rooms in Matrix.</p>',
    ]
    if form.error:
        parts.append(f'<p class="error" role="alert" id="error">{escape(form.error)}</p>')
    action = escape(form.action)
    if "password" in form.methods:
        invalid = (
            ' aria-invalid="true" aria-describedby="error"'
            if (form.error and form.failed_method == "password")
            else ""
        )
        autofocus = " autofocus" if form.failed_method in (None, "password") else ""
        parts.append(
            f'<form method="post" action="{action}">{_hidden(form, "password")}'
            '<label for="username">Username</label>'
            '<input type="text" id="username" name="username" autocomplete="username" '
            f'autocapitalize="none" spellcheck="false" required value="{escape(form.username)}"'
            f"{autofocus}{invalid}>"
            '<label for="password">Password</label>'
            '<input type="password" id="password" name="password" '
            f'autocomplete="current-password" required{invalid}>'
            '<button type="submit">Sign in</button></form>'
        )
    if "token" in form.methods:
        if "password" in form.methods:
            parts.append(f'<p class="or">Or sign in with a {site} API token</p>')
        invalid = (
            ' aria-invalid="true" aria-describedby="error"'
            if (form.error and form.failed_method == "token")
            else ""
        )
        autofocus = (
            " autofocus"
            if form.failed_method == "token" or ("password" not in form.methods)
            else ""
        )
        parts.append(
            f'<form method="post" action="{action}">{_hidden(form, "token")}'
            '<label for="token">API token</label>'
            '<input type="password" id="token" name="token" autocomplete="off" required'
            f"{autofocus}{invalid}>"
            f"<small>Find it in {site} under your user profile, Credentials.</small>"
            '<button type="submit">Sign in with token</button></form>'
        )
    return _document(f"Sign in with {form.site_name}", "".join(parts))


def message_page(site_name: str, title: str, text: str) -> str:
    """A page that ends the visit: no form, no redirect."""
    body = (
        f"<h1>{escape(title)}</h1>"
        f'<p class="lead" role="status">{escape(text)}</p>'
        f"<small>{escape(site_name)} sign-in for Matrix</small>"
    )
    return _document(title, body)
