#!/usr/bin/env bash
# Set up everything and run the whole test suite: lint, types, tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh test
.venv/bin/ruff check .
.venv/bin/mypy
exec .venv/bin/pytest "$@"
