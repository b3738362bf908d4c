"""Fixtures for the integration tests: one real Synapse per test session.

Synapse runs as a plain subprocess started by a synchronous session fixture, so it does not
depend on any event loop and every test keeps its own (pytest-asyncio's default). Synapse reads
appservice registrations only at start, so the bridge's registration (AS port and tokens) is
fixed here, before Synapse starts, and handed to the tests in the ``synapse`` fixture.
"""

from __future__ import annotations

import itertools
import os
import secrets
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from waldur_devenv.matrix_user import MatrixTestUser
from waldur_devenv.synapse import (
    AppserviceHomeserver,
    LocalSynapse,
    SynapseNotInstalled,
    find_synapse_python,
    free_port,
    oidc_provider_config,
    require_oidc,
    write_registration,
)
from waldur_devenv.testing import make_registration
from waldur_simulator import WaldurSimulator

from .helpers import OIDC_CLIENT_SECRET, BridgeEnv

# Fixed so that a failing run can be replayed by hand against the logs in the work directory.
AS_TOKEN = "waldur-test-as-token"
HS_TOKEN = "waldur-test-hs-token"

_INTEGRATION_DIR = Path(__file__).parent
_user_seq = itertools.count(1)


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def pytest_report_header() -> str:
    # Visible in every run, so a skipped integration suite is never silent.
    try:
        return f"synapse python: {find_synapse_python()}"
    except SynapseNotInstalled as e:
        return f"synapse python: MISSING, integration tests will skip. {e}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _INTEGRATION_DIR in item.path.parents:
            item.add_marker(pytest.mark.integration)


def _make_registration(as_port: int) -> dict[str, Any]:
    # The bridge's own generator (what `waldur-bridge -g` writes), with fixed tokens.
    tokens = {"as_token": AS_TOKEN, "hs_token": HS_TOKEN}
    return make_registration(as_port, tokens)


@pytest.fixture(scope="session")
def synapse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppserviceHomeserver]:
    """A running Synapse with the bridge's appservice registered (AS not running yet)."""
    workdir = tmp_path_factory.mktemp("synapse")
    as_port = free_port()
    registration = _make_registration(as_port)
    registration_path = write_registration(workdir / "registration.yaml", registration)
    try:
        hs = LocalSynapse(workdir, registration_path=registration_path)
        require_oidc(hs.python)
    except SynapseNotInstalled as e:
        missing = str(e)
    else:
        missing = None
    if missing is None:
        # "Continue with Waldur": the bridge's sign-in provider lives on the AS port, which is
        # fixed for the session, so Synapse knows its issuer before it starts (Synapse reads
        # its config only then). Logins back to Synapse itself skip its confirmation page.
        hs.extra_config = {
            "oidc_providers": [
                oidc_provider_config(f"http://127.0.0.1:{as_port}/oidc", OIDC_CLIENT_SECRET)
            ],
            "sso": {"client_whitelist": [f"{hs.url}/"]},
        }
    if missing is not None:
        if _in_ci():
            pytest.fail(missing, pytrace=False)
        # A warning too: skip reasons are hidden without -rs, the warnings summary is not.
        warnings.warn(f"integration tests skipped: {missing}", stacklevel=1)
        pytest.skip(missing)
    hs.start_blocking()
    try:
        yield AppserviceHomeserver(hs, registration, registration_path, as_port)
    finally:
        hs.stop_blocking()


@pytest.fixture
async def matrix_user(
    synapse: AppserviceHomeserver,
) -> AsyncIterator[Callable[..., Awaitable[MatrixTestUser]]]:
    """Factory: ``await matrix_user("alice")`` registers a fresh real user and logs it in.

    Localparts get a unique suffix because the Synapse (and its users) live for the session.
    """
    users: list[MatrixTestUser] = []

    async def make(name: str = "user", *, admin: bool = False) -> MatrixTestUser:
        localpart = f"{name}{next(_user_seq)}_{secrets.token_hex(3)}"
        user_id, token = await synapse.register_user(localpart, "password", admin)
        user = MatrixTestUser(synapse.url, user_id, token)
        users.append(user)
        return user

    yield make
    for user in users:
        await user.close()


@pytest.fixture(params=["current"])
async def simulator(request: pytest.FixtureRequest) -> AsyncIterator[WaldurSimulator]:
    """The Waldur simulator; parametrize indirectly with "7.0" to play the 2024 API."""
    sim = WaldurSimulator(generation=request.param)
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


@pytest.fixture
async def bridge_env(
    synapse: AppserviceHomeserver, simulator: WaldurSimulator, tmp_path: Path
) -> AsyncIterator[BridgeEnv]:
    env = BridgeEnv(synapse, simulator, tmp_path)
    try:
        yield env
    finally:
        await env.close()
