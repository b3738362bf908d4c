"""HTTP endpoints mounted on the appservice's aiohttp server (the port the homeserver uses)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..sync.changes import WEBHOOK_EVENTS
from .transactions import transaction_guard
from .webhook import WebhookReceiver

if TYPE_CHECKING:
    from ..__main__ import WaldurBridge


def mount_web(bridge: WaldurBridge) -> None:
    config = bridge.config
    bridge.az.app.middlewares.append(transaction_guard(config["appservice.hs_token"]))
    if config["waldur.webhook.enabled"]:
        bridge.webhook = WebhookReceiver(
            config["waldur.webhook.secret"],
            bridge.sync.handle_event,
            max_body_size=config["waldur.webhook.max_body_size"],
            event_types=WEBHOOK_EVENTS,
        )
        bridge.az.app.add_subapp(
            config["waldur.webhook.path_prefix"].rstrip("/"), bridge.webhook.app
        )
    if config["bridge.provisioning.enabled"]:
        from .provisioning import mount_provisioning

        mount_provisioning(bridge)
    settings, _problems = config.signin_settings()
    if settings.enabled:
        from .signin import mount_signin

        bridge.signin = mount_signin(bridge, settings)


__all__ = ["WebhookReceiver", "mount_web"]
