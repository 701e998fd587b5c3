#!/usr/bin/env bash
# Set up everything and run the whole test suite: lint, format, types, tests with the coverage
# floor. With arguments, they go to pytest (one file, -k, -m) and the floor is not applied.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh test
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
if [ "$#" -gt 0 ]; then
    exec .venv/bin/pytest "$@"
fi
# The floor counts the code run in the test process (servers started in-process); the real
# processes the tests also start are not measured.
exec .venv/bin/pytest --cov --cov-report=term:skip-covered --cov-fail-under=80
