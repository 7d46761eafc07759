#!/usr/bin/env bash
# The main job in one command: create .venv if needed, install the project, and run the demo
# federation the way agencies run one, until Ctrl-C or SIGTERM: a central server in
# var/demo/central, each agency's node enrolled in its own directory (var/demo/nodes/...) with
# keys made there, registration requests filed and approved, and the central server and every
# node each a process of its own (python -m xroad_hub.demo.workflow). Run it again and it
# resumes: steps already done are skipped. Extra arguments go to the workflow (try --help).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    "${PYTHON:-python3}" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e .
exec .venv/bin/python -m xroad_hub.demo.workflow "$@"
