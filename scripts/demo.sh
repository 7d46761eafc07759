#!/usr/bin/env bash
# The main job in one command: create .venv if needed, install the project, generate the
# development PKI where missing, and run the demo federation until Ctrl-C.
# Extra arguments go to `xroad-hub up` (try --help).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    "${PYTHON:-python3}" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e .
.venv/bin/xroad-hub pki init
exec .venv/bin/xroad-hub up "$@"
