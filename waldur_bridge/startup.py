"""Start-up checks against the homeserver: each mistake an operator can make ends in one line
that names the setting and the fix, never a traceback or a request flood."""

from __future__ import annotations

from mautrix.api import Method, Path
from mautrix.appservice import IntentAPI


async def ping_bridge(intent: IntentAPI, appservice_id: str, txn_id: str | None = None) -> int:
    """Ask the homeserver to ping this appservice; the round trip in milliseconds (0 or more).

    mautrix's ``appservice_ping`` returns ``duration_ms or -1``, so a sub-millisecond round trip
    (Synapse rounds down to 0) would read as -1, the value that looks like a failure.
    """
    resp = await intent.api.request(
        Method.POST,
        Path.v1.appservice[appservice_id].ping,
        content={"transaction_id": txn_id} if txn_id is not None else {},
    )
    duration = resp.get("duration_ms")
    return int(duration) if isinstance(duration, (int, float)) else 0
