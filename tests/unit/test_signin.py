"""The sign-in provider's pure parts: settings, claims, codes, PKCE, ID tokens, CSRF, limits,
and the page."""

from __future__ import annotations

import base64
import hashlib
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from authlib.oauth2.rfc6749.errors import OAuth2Error
from joserfc import jwt
from joserfc.jwk import KeySet

from waldur_bridge.config import Config, ConfigError
from waldur_bridge.web.signin.guards import CsrfTokens, FailureLimits
from waldur_bridge.web.signin.keys import KeyRing, generate_key
from waldur_bridge.web.signin.pages import SigninForm, message_page, signin_page
from waldur_bridge.web.signin.server import (
    CODE_TTL,
    FormRequest,
    Provider,
    SignedInUser,
    user_claims,
)
from waldur_bridge.web.signin.settings import (
    SigninClient,
    SigninSettings,
    read_settings,
)
from waldur_devenv.testing import BASE_CONFIG, write_config

ISSUER_BASE = "http://127.0.0.1:29333"
CALLBACK = "http://127.0.0.1:8008/_synapse/client/oidc/callback"
SECRET = "s3cret-s3cret-s3cret"
ALICE = SignedInUser(
    uuid="a" * 32,
    username="alice",
    full_name="Alice Liddell",
    email="alice@example.org",
    mxid="@waldur_alice:localhost",
)
KEY = generate_key()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def settings(**clients: tuple[str, ...]) -> SigninSettings:
    return SigninSettings(
        enabled=True,
        public_url=ISSUER_BASE,
        site_name="Acme Waldur",
        methods=("password", "token"),
        clients={
            cid: SigninClient(cid, SECRET, uris)
            for cid, uris in (clients or {"synapse": (CALLBACK,)}).items()
        },
    )


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def authorize_params(challenge: str, **extra: str) -> dict[str, str]:
    return {
        "response_type": "code",
        "client_id": "synapse",
        "redirect_uri": CALLBACK,
        "scope": "openid profile",
        "state": "state-1",
        "nonce": "nonce-1",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        **extra,
    }


def issue_code(provider: Provider, params: dict[str, str]) -> str:
    request = FormRequest("GET", f"{ISSUER_BASE}/oidc/authorize", {}, params)
    grant = provider.get_consent_grant(request)
    status, _, headers = provider.create_authorization_response(
        request, grant_user=ALICE, grant=grant
    )
    assert status == 302
    location = urlsplit(dict(headers)["Location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == CALLBACK
    query = parse_qs(location.query)
    assert query["state"] == [params["state"]]
    return query["code"][0]


def redeem(
    provider: Provider, code: str, verifier: str, *, how: str = "basic", secret: str = SECRET
) -> tuple[int, dict[str, Any]]:
    data = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": CALLBACK,
        "code_verifier": verifier,
    }
    headers = {}
    if how == "basic":
        basic = base64.b64encode(f"synapse:{secret}".encode()).decode()
        headers["Authorization"] = f"Basic {basic}"
    else:
        data.update(client_id="synapse", client_secret=secret)
    request = FormRequest("POST", f"{ISSUER_BASE}/oidc/token", headers, data)
    status, body, _ = provider.create_token_response(request)
    return status, body


# region settings


def read(values: dict[str, Any], env: dict[str, str] | None = None) -> list[str]:
    base = {"bridge.signin.enabled": True}
    base.update(values)

    def get(key: str, default: Any) -> Any:
        return base.get(key, default)

    return read_settings(get, (env or {}).get)[1]


GOOD_CLIENT = {"client_id": "synapse", "client_secret": SECRET, "redirect_uris": [CALLBACK]}


def test_settings_ok_and_issuer() -> None:
    values = {
        "bridge.signin.public_url": "https://bridge.example.org/",
        "bridge.signin.clients": [GOOD_CLIENT],
    }
    assert read(values) == []
    parsed, _ = read_settings(
        lambda k, d: {"bridge.signin.enabled": True, **values}.get(k, d), {}.get
    )
    assert parsed.issuer == "https://bridge.example.org/oidc"
    assert parsed.methods == ("password", "token")


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"bridge.signin.public_url": None}, "bridge.signin.public_url: set it"),
        ({"bridge.signin.public_url": "http://bridge.example.org"}, "uses plain http; use https"),
        ({"bridge.signin.public_url": "ftp://x"}, "is not an http(s) URL"),
        ({"bridge.signin.methods": ["password", "sms"]}, "bridge.signin.methods: 'sms'"),
        ({"bridge.signin.clients": []}, "bridge.signin.clients: list at least one"),
        (
            {"bridge.signin.clients": [{**GOOD_CLIENT, "client_secret": "short"}]},
            "bridge.signin.clients[0].client_secret: must be at least 16",
        ),
        (
            {
                "bridge.signin.clients": [
                    {**GOOD_CLIENT, "redirect_uris": ["http://hs.example/cb"]}
                ]
            },
            "bridge.signin.clients[0].redirect_uris: 'http://hs.example/cb'",
        ),
        (
            {"bridge.signin.clients": [{**GOOD_CLIENT, "client_id": "has space"}]},
            "bridge.signin.clients[0].client_id",
        ),
        (
            {"bridge.signin.clients": [{**GOOD_CLIENT, "redirect_uri": [CALLBACK]}]},
            "bridge.signin.clients[0].redirect_uri: not a known setting",
        ),
        ({"bridge.signin.clients": [GOOD_CLIENT, GOOD_CLIENT]}, "is listed twice"),
    ],
)
def test_settings_problems_name_the_key(values: dict[str, Any], expected: str) -> None:
    full = {
        "bridge.signin.public_url": "http://localhost:8080",
        "bridge.signin.clients": [GOOD_CLIENT],
    }
    full.update(values)
    problems = read(full)
    assert len(problems) == 1 and expected in problems[0], problems
    assert "\n" not in problems[0]


def test_settings_off_reports_nothing() -> None:
    assert read({"bridge.signin.enabled": False}) == []


def test_client_secret_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_config(
        tmp_path / "config.yaml",
        homeserver_url="http://127.0.0.1:8008",
        domain="localhost",
        as_port=29333,
        waldur_url="http://127.0.0.1:8080",
        waldur_token="t" * 40,
        database="sqlite:x.db",
        as_token="a" * 20,
        hs_token="h" * 20,
        overrides={
            "bridge.signin.enabled": True,
            "bridge.signin.public_url": "http://127.0.0.1:29333",
            "bridge.signin.clients": [
                {"client_id": "my-synapse", "client_secret": "", "redirect_uris": [CALLBACK]}
            ],
        },
    )

    def load() -> Config:
        config = Config(str(path), "", BASE_CONFIG)
        config.load()
        config.update(save=False)
        return config

    with pytest.raises(ConfigError) as error:
        load().validate()
    assert any(
        "WALDUR_BRIDGE_BRIDGE_SIGNIN_CLIENTS_MY_SYNAPSE_CLIENT_SECRET" in p
        for p in error.value.problems
    )
    monkeypatch.setenv("WALDUR_BRIDGE_BRIDGE_SIGNIN_CLIENTS_MY_SYNAPSE_CLIENT_SECRET", SECRET)
    config = load()
    config.validate()
    parsed, problems = config.signin_settings()
    assert problems == [] and parsed.clients["my-synapse"].client_secret == SECRET
    # Never written into the file.
    config.save()
    assert SECRET not in path.read_text()


# endregion
# region claims, codes, PKCE, ID tokens


def test_claims() -> None:
    assert user_claims(ALICE) == {
        "sub": "a" * 32,
        "preferred_username": "waldur_alice",
        "name": "Alice Liddell",
        "email": "alice@example.org",
    }
    no_mail = SignedInUser("b" * 32, "bob", "", "", "@waldur_bob:localhost")
    assert user_claims(no_mail) == {
        "sub": "b" * 32,
        "preferred_username": "waldur_bob",
        "name": "bob",
    }


def test_code_flow_gives_a_signed_id_token_and_userinfo() -> None:
    provider = Provider(settings(), lambda: KEY)
    verifier, challenge = pkce()
    code = issue_code(provider, authorize_params(challenge))
    status, body = redeem(provider, code, verifier)
    assert status == 200, body
    assert body["token_type"] == "Bearer" and body["expires_in"] <= 300
    assert "refresh_token" not in body
    public = KeySet.import_key_set(KeyRing([KEY]).jwks())
    token = jwt.decode(body["id_token"], public)
    assert token.header["alg"] == "RS256" and token.header["kid"] == KEY.kid
    claims = token.claims
    assert claims["iss"] == f"{ISSUER_BASE}/oidc"
    assert claims["aud"] == ["synapse"]
    assert claims["nonce"] == "nonce-1"
    assert claims["sub"] == ALICE.uuid and claims["preferred_username"] == "waldur_alice"
    assert claims["exp"] - claims["iat"] <= 300
    assert provider.userinfo(body["access_token"]) == user_claims(ALICE)
    assert provider.userinfo("not-a-token") is None


def test_client_secret_post_works_and_wrong_secret_does_not() -> None:
    provider = Provider(settings(), lambda: KEY)
    verifier, challenge = pkce()
    code = issue_code(provider, authorize_params(challenge))
    status, body = redeem(provider, code, verifier, how="post", secret="wrong-wrong-wrong")
    assert status == 401 and body["error"] == "invalid_client"
    code = issue_code(provider, authorize_params(challenge, nonce="nonce-2"))
    assert redeem(provider, code, verifier, how="post")[0] == 200


def test_code_is_single_use() -> None:
    provider = Provider(settings(), lambda: KEY)
    verifier, challenge = pkce()
    code = issue_code(provider, authorize_params(challenge))
    assert redeem(provider, code, verifier)[0] == 200
    status, body = redeem(provider, code, verifier)
    assert status == 400 and body["error"] == "invalid_grant"


def test_code_expires_after_60_seconds() -> None:
    clock = Clock()
    provider = Provider(settings(), lambda: KEY, clock=clock)
    verifier, challenge = pkce()
    code = issue_code(provider, authorize_params(challenge))
    clock.now += CODE_TTL + 0.1
    status, body = redeem(provider, code, verifier)
    assert status == 400 and body["error"] == "invalid_grant"
    assert len(provider.codes) == 0
    code = issue_code(provider, authorize_params(challenge, nonce="nonce-2"))
    clock.now += CODE_TTL - 1
    assert redeem(provider, code, verifier)[0] == 200


def test_access_token_expires() -> None:
    clock = Clock()
    provider = Provider(settings(), lambda: KEY, clock=clock)
    verifier, challenge = pkce()
    _, body = redeem(provider, issue_code(provider, authorize_params(challenge)), verifier)
    clock.now += 301
    assert provider.userinfo(body["access_token"]) is None


def test_pkce_verifier_must_match_and_spends_the_code() -> None:
    provider = Provider(settings(), lambda: KEY)
    verifier, challenge = pkce()
    code = issue_code(provider, authorize_params(challenge))
    other, _ = pkce()
    status, body = redeem(provider, code, other)
    assert status == 400 and body["error"] == "invalid_grant"
    # A failed attempt spent the code: the right verifier comes too late.
    assert redeem(provider, code, verifier)[0] == 400


@pytest.mark.parametrize(
    "change",
    [
        {"code_challenge": ""},
        {"code_challenge_method": "plain"},
        {"client_id": "someone-else"},
        {"redirect_uri": "http://127.0.0.1:8008/elsewhere"},
        {"redirect_uri": CALLBACK + "?x=1"},
        {"scope": "profile"},
        {"response_type": "token"},
    ],
)
def test_bad_authorization_requests_are_refused(change: dict[str, str]) -> None:
    provider = Provider(settings(), lambda: KEY)
    _, challenge = pkce()
    params = {k: v for k, v in {**authorize_params(challenge), **change}.items() if v}
    request = FormRequest("GET", f"{ISSUER_BASE}/oidc/authorize", {}, params)
    with pytest.raises(OAuth2Error):
        provider.get_consent_grant(request)


def test_a_nonce_is_not_accepted_twice() -> None:
    provider = Provider(settings(), lambda: KEY)
    _, challenge = pkce()
    issue_code(provider, authorize_params(challenge))
    request = FormRequest("GET", f"{ISSUER_BASE}/oidc/authorize", {}, authorize_params(challenge))
    with pytest.raises(OAuth2Error, match="Replay"):
        provider.get_consent_grant(request)


def test_discovery_names_the_endpoints() -> None:
    doc = Provider(settings(), lambda: KEY).discovery()
    issuer = f"{ISSUER_BASE}/oidc"
    assert doc["issuer"] == issuer
    assert doc["authorization_endpoint"] == f"{issuer}/authorize"
    assert doc["jwks_uri"] == f"{issuer}/jwks"
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert set(doc["token_endpoint_auth_methods_supported"]) == {
        "client_secret_basic",
        "client_secret_post",
    }


# endregion
# region CSRF, limits, page


def test_csrf_is_bound_to_browser_request_and_time() -> None:
    clock = Clock()
    csrf = CsrfTokens(b"hs-token", ttl=1800, clock=clock)
    token = csrf.issue("browser-1", "client_id=synapse&state=a")
    assert csrf.check(token, "browser-1", "client_id=synapse&state=a")
    assert not csrf.check(token, "browser-2", "client_id=synapse&state=a")
    assert not csrf.check(token, "browser-1", "client_id=synapse&state=b")
    assert not csrf.check(token, "", "client_id=synapse&state=a")
    assert not csrf.check("garbage", "browser-1", "client_id=synapse&state=a")
    assert not CsrfTokens(b"other").check(token, "browser-1", "client_id=synapse&state=a")
    clock.now += 1801
    assert not csrf.check(token, "browser-1", "client_id=synapse&state=a")


def test_a_username_stops_at_three_failures_below_waldurs_lockout() -> None:
    clock = Clock()
    limits = FailureLimits(clock=clock)
    for address in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):
        assert limits.wait(address, "alice") == 0
        limits.failed(address, "alice")
    # The fourth try would reach Waldur's lockout; from any address, in any spelling.
    assert limits.wait("10.0.0.4", "Alice") > 0
    assert limits.wait("10.0.0.4", "bob") == 0
    clock.now += 601
    assert limits.wait("10.0.0.4", "alice") == 0


def test_an_address_stops_after_ten_failures() -> None:
    limits = FailureLimits(clock=Clock())
    for n in range(10):
        assert limits.wait("10.0.0.9", f"user{n}") == 0
        limits.failed("10.0.0.9", f"user{n}")
    assert limits.wait("10.0.0.9", "fresh") > 0
    assert limits.wait("10.0.0.9") > 0
    assert limits.wait("10.0.0.10", "fresh") == 0


def test_page_escapes_and_carries_the_request() -> None:
    form = SigninForm(
        site_name="Acme <Waldur>",
        methods=("password", "token"),
        request='client_id=synapse&state="><script>',
        csrf="1.abc",
        action="http://127.0.0.1:29333/oidc/authorize",
        error="Wrong <b>",
        username='ali"ce',
    )
    page = signin_page(form)
    assert "<script>" not in page and "Acme &lt;Waldur&gt;" in page
    assert 'name="username"' in page and 'name="password"' in page and 'name="token"' in page
    assert 'value="client_id=synapse&amp;state=&quot;&gt;&lt;script&gt;"' in page
    assert 'value="ali&quot;ce"' in page
    assert 'role="alert"' in page and "Wrong &lt;b&gt;" in page
    only_token = signin_page(SigninForm("W", ("token",), "", "1.a", "/a"))
    assert 'name="password"' not in only_token and 'name="token"' in only_token
    assert "<form" not in message_page("W", "You have no project rooms yet", "x")


# endregion


def test_signin_needs_puppet_mode(tmp_path: Path) -> None:
    path = write_config(
        tmp_path / "config.yaml",
        homeserver_url="http://127.0.0.1:8008",
        domain="localhost",
        as_port=29333,
        waldur_url="http://127.0.0.1:8080",
        waldur_token="t" * 40,
        database="sqlite:x.db",
        as_token="a" * 20,
        hs_token="h" * 20,
        overrides={
            "bridge.signin.enabled": True,
            "bridge.signin.public_url": "http://127.0.0.1:29333",
            "bridge.signin.clients": [GOOD_CLIENT],
            "bridge.user_mapping.mode": "template",
            "bridge.user_mapping.template": "@{username}:localhost",
        },
    )
    config = Config(str(path), "", BASE_CONFIG)
    config.load()
    config.update(save=False)
    with pytest.raises(ConfigError) as error:
        config.validate()
    assert [p for p in error.value.problems if p.startswith("bridge.signin")] == [
        "bridge.signin.enabled: Continue with Waldur signs people in to their puppets, and "
        "bridge.user_mapping.mode is not puppet (people use their own accounts): set "
        "bridge.signin.enabled to false."
    ]


def test_client_secrets_are_redacted_from_logs(tmp_path: Path) -> None:
    from waldur_bridge.logs import config_secrets

    path = write_config(
        tmp_path / "config.yaml",
        homeserver_url="http://127.0.0.1:8008",
        domain="localhost",
        as_port=29333,
        waldur_url="http://127.0.0.1:8080",
        waldur_token="t" * 40,
        database="sqlite:x.db",
        as_token="a" * 20,
        hs_token="h" * 20,
        overrides={
            "bridge.signin.enabled": True,
            "bridge.signin.public_url": "http://127.0.0.1:29333",
            "bridge.signin.clients": [GOOD_CLIENT],
        },
    )
    config = Config(str(path), "", BASE_CONFIG)
    config.load()
    config.update(save=False)
    assert SECRET in config_secrets(config)
