#!/usr/bin/env bash
# The whole test suite in one command: create .venv if needed, install the project with its
# test extras, check lint, run pytest. Extra arguments go to pytest.
#
# PYTHONS="3.11 3.13" runs the suite once per Python version, each in its own .venv-X.Y
# (CI does, so that requires-python stays true); a version that cannot be found is an error.
# Without PYTHONS: one run with ${PYTHON:-python3} in .venv.
set -euo pipefail
cd "$(dirname "$0")/.."

# The interpreter of Python version $1 (e.g. 3.13): pythonX.Y on PATH, else pyenv's newest
# installed X.Y (pyenv's shims only offer the versions selected in the shell).
find_python() {
    local version=$1 full
    if "python$version" -c '' 2>/dev/null; then
        echo "python$version"
        return
    fi
    if command -v pyenv >/dev/null; then
        full=$(pyenv versions --bare | grep -E "^${version//./\\.}\.[0-9]+$" | sort -V | tail -n 1)
        if [ -n "$full" ]; then
            echo "$(pyenv root)/versions/$full/bin/python$version"
            return
        fi
    fi
    echo "scripts/test.sh: Python $version not found: install it or change PYTHONS" >&2
    return 1
}

# run_suite PYTHON VENV [pytest args]: set up VENV with PYTHON and run pytest in it, one
# worker per core (pytest-xdist), a test file to a worker (its module fixtures, e.g. a
# federation, are started once); TEST_WORKERS=0 runs in this process.
run_suite() {
    local python=$1 venv=$2
    shift 2
    if [ ! -x "$venv/bin/python" ]; then
        "$python" -m venv "$venv"
    fi
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    "$venv/bin/python" -m pip install --quiet -e '.[test]'
    "$venv/bin/ruff" check .
    echo "== pytest on $("$venv/bin/python" --version) ($venv)" >&2
    "$venv/bin/python" -m pytest -n "${TEST_WORKERS:-auto}" --dist loadfile "$@"
}

if [ -z "${PYTHONS:-}" ]; then
    run_suite "${PYTHON:-python3}" .venv "$@"
    exit
fi
for version in $PYTHONS; do
    python=$(find_python "$version")
    run_suite "$python" ".venv-$version" "$@"
done
