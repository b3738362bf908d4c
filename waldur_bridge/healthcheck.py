"""Container health check: is the appservice's liveness endpoint answering on the configured port?

``python -m waldur_bridge.healthcheck [config.yaml]`` (default: $DATA_DIR/config.yaml, as in
docker-run.sh) exits 0 when
``http://<appservice.hostname>:<appservice.port>/_matrix/mau/live`` answers 200, else 1 with one
line saying why. It reads the config file itself (no bridge start-up), and the same
WALDUR_BRIDGE_APPSERVICE_PORT / _HOSTNAME overrides the bridge honours.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

from ruamel.yaml import YAML

TIMEOUT = 4.0
# Listening on every interface means reachable on loopback too.
WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def live_url(config: Mapping[str, Any], environ: Mapping[str, str]) -> str:
    appservice = config.get("appservice") or {}
    host = str(environ.get("WALDUR_BRIDGE_APPSERVICE_HOSTNAME", appservice.get("hostname", "")))
    port = int(environ.get("WALDUR_BRIDGE_APPSERVICE_PORT", appservice.get("port", 29334)))
    host = WILDCARDS.get(host, host)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/_matrix/mau/live"


def main(argv: list[str]) -> int:
    default = os.path.join(os.environ.get("DATA_DIR", "/data"), "config.yaml")
    path = argv[1] if len(argv) > 1 else default
    try:
        with open(path, encoding="utf-8") as stream:
            config = YAML(typ="safe", pure=True).load(stream) or {}
        url = live_url(config, os.environ)
    except (OSError, ValueError, TypeError, AttributeError) as e:
        print(f"unhealthy: cannot read appservice.port from {path}: {e}", file=sys.stderr)
        return 1
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as resp:
            if resp.status == 200:
                return 0
            print(f"unhealthy: {url} answered HTTP {resp.status}", file=sys.stderr)
    except (OSError, urllib.error.URLError) as e:
        print(f"unhealthy: {url}: {e}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
