#!/usr/bin/env bash
# Installs Synapse (from PyPI) into its own venv for the integration tests, the demo and the
# benchmarks. Synapse drags in Twisted, cryptography, pydantic...; a separate venv keeps them
# out of the bridge's environment (the harness only needs the path of this venv's python).
#
# Idempotent: does nothing when the venv already imports synapse.
#   SYNAPSE_VENV  where to create the venv (default: <repo>/.venv-synapse)
#   PYTHON        interpreter used to create it (default: python3)
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${SYNAPSE_VENV:-$repo_root/.venv-synapse}"
python="${PYTHON:-python3}"
# The oidc extra (authlib): the tests and the demo sign people in through the bridge's
# OpenID Connect provider ("Continue with Waldur").
spec="matrix-synapse[oidc]>=1.120,<2"

if ! "$venv/bin/python" -c "import synapse, authlib" >/dev/null 2>&1; then
    if [ ! -x "$venv/bin/python" ]; then
        "$python" -m venv "$venv"
    fi
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$spec"
fi

version="$("$venv/bin/python" -c "import synapse; print(synapse.__version__)")"
echo "synapse $version ready: $venv/bin/python"
