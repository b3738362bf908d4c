#!/bin/sh
# Entrypoint of the waldur-matrix-bridge image (the usual mautrix-bridge flow):
#   1st start: no config.yaml       -> write the example config, say what to edit, exit 0
#   2nd start: no registration.yaml -> waldur-bridge -g, say how to install it, exit 0
#   then:                              exec waldur-bridge -c config.yaml [extra arguments]
# DATA_DIR (default /data) holds config.yaml, registration.yaml and the SQLite database.
# The image already runs as the unprivileged user `waldur` (uid 1337): no su-exec here.
set -eu

DATA_DIR="${DATA_DIR:-/data}"
CONFIG="$DATA_DIR/config.yaml"
REGISTRATION="$DATA_DIR/registration.yaml"

if [ ! -d "$DATA_DIR" ] || [ ! -w "$DATA_DIR" ]; then
    echo "error: $DATA_DIR is not a directory writable by uid $(id -u)." >&2
    echo "Mount a volume there that this user owns, e.g. chown -R $(id -u):$(id -g) <volume>." >&2
    exit 1
fi
cd "$DATA_DIR"

if [ ! -f "$CONFIG" ]; then
    package_dir="$(python3 -c 'import os, waldur_bridge; print(os.path.dirname(waldur_bridge.__file__))')"
    cp "$package_dir/example-config.yaml" "$CONFIG"
    # In a container the bridge must listen on all interfaces for the homeserver to reach it
    # (only the appservice section's hostname; metrics keeps 127.0.0.1).
    sed -i '/^appservice:/,/^[^ #]/ s/^    hostname: 127\.0\.0\.1$/    hostname: 0.0.0.0/' "$CONFIG"
    cat <<MSG
Wrote an example configuration to $CONFIG. Edit it, at least:
  homeserver.address, homeserver.domain  your homeserver (URL as seen from this container)
  appservice.address                     the URL at which the homeserver reaches this container,
                                         e.g. http://waldur-bridge:29334
  appservice.database                    postgres://user:password@host/db for production
                                         (default: SQLite in $DATA_DIR)
  waldur.url, waldur.token               your Waldur and the service account's API token
                                         (or WALDUR_BRIDGE_WALDUR_TOKEN[_FILE] in the environment)
  bridge.permissions                     who may use the bridge and who is an admin
  bridge.portals.create                  which projects get rooms: none (default: only rooms
                                         admins create), all, or customers (listed organizations)
  bridge.management_room                 the admins' room: an alias inside the bridge's alias
                                         namespace (bridge.alias_template), such as
                                         #waldur_admins:your.server; null disables it
Then start the container again to generate the registration.
MSG
    exit 0
fi

if [ ! -f "$REGISTRATION" ]; then
    waldur-bridge -g -c "$CONFIG" -r "$REGISTRATION"
    # The registration's url is where the homeserver sends transactions; from another container
    # "localhost" is the homeserver's own container, so the bridge would never hear from it.
    address="$(python3 -c 'import sys
from ruamel.yaml import YAML
print(YAML(typ="safe", pure=True).load(open(sys.argv[1]))["appservice"]["address"])' "$CONFIG" \
        2>/dev/null || true)"
    case "$address" in
        *://localhost | *://localhost[:/]* | *://127.* | *://\[::1\]*)
            cat >&2 <<MSG
warning: appservice.address is $address, so the registration tells the homeserver to reach the
bridge at localhost: from the homeserver's container that is itself. Set appservice.address to
the URL at which the homeserver reaches this container (e.g. http://waldur-bridge:29334),
delete $REGISTRATION and start the container again.
MSG
            ;;
    esac
    cat <<MSG
Wrote the appservice registration to $REGISTRATION (its tokens are also in $CONFIG).
Install it in the homeserver: for Synapse, copy it next to homeserver.yaml and list it under
  app_service_config_files:
    - /path/to/registration.yaml
then restart the homeserver and start this container again.
MSG
    exit 0
fi

exec waldur-bridge -c "$CONFIG" "$@"
