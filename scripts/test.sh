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
# Tests run side by side in worker processes (pytest-xdist): most of a test's time is spent
# waiting on the real servers and processes it starts, so more workers than cores pay. Each test
# picks its own ports, temporary directory and namespace names. The workers take the tests one
# by one from one queue, the slow ones first (tests/conftest.py orders it). METADNS_TEST_WORKERS
# sets how many (6 by default: on 2 vCPUs, six finished both passes sooner than four or five,
# the compiled pass most, whose tests mostly wait; 0 runs the tests in this process, one at a time).
WORKERS=(-n "${METADNS_TEST_WORKERS:-6}" --dist load --maxschedchunk 1)
# 1. The whole suite on the pure-Python modules. The floor counts the code run in the test
#    processes (servers started in-process); the real processes the tests also start are not measured.
#    The recvmmsg/sendmmsg extension first: the listener uses it with the pure modules too.
if ! .venv/bin/python scripts/compile.py --native-only --strict && [ "${CI:-}" = true ]; then
    exit 1
fi
METADNS_PURE_PYTHON=1 .venv/bin/pytest "${WORKERS[@]}" -m "not compiled_build" --cov --cov-report=term:skip-covered \
    --cov-fail-under=80
# 2. The compiled build of the DNS hot path (scripts/compile.py), and the DNS tests again on it.
if ! .venv/bin/python scripts/compile.py --strict; then
    if [ "${CI:-}" = true ]; then
        exit 1
    fi
    echo "test.sh: the compiled build was not tested (see the line above)" >&2
    exit 0
fi
#    Every test file that drives the DNS server (tests/test_compiled.py checks this list). The
#    etcd tests on one etcd version here (3.5; the pure pass runs both): which etcd the metadata
#    service follows changes nothing in the compiled modules, which never talk to etcd.
METADNS_EXPECT_COMPILED=1 exec .venv/bin/pytest "${WORKERS[@]}" -q -p no:cacheprovider -k "not 3.4" tests/test_compiled.py tests/test_answers_table.py tests/test_answers_incremental.py \
    tests/test_dns_*.py tests/test_stub_resolvers.py tests/test_render.py tests/test_dashboard.py tests/test_etcd_source.py \
    tests/test_fleet_put.py
