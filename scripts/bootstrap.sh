#!/usr/bin/env bash
# Set up a fresh machine: the venv with the package, and for "test" also the test tools and the
# real servers the tests start (Debian packages, installed when run as root; both modes install
# the C compiler and headers the compiled DNS hot path is built with).
#   scripts/bootstrap.sh run    # runtime only
#   scripts/bootstrap.sh test   # runtime + test dependencies + Debian packages
# Python packages are installed at the versions of constraints/tested.txt, and only when
# pyproject.toml or the constraints changed since the last install. etcd's API modules are then
# generated from shared/etcd_api/*.proto (scripts/gen_etcd_api.py, when the .proto files changed):
# a run that cannot generate them fails, with one line saying why.
set -euo pipefail
cd "$(dirname "$0")/.."
MODE="${1:-run}"
PYTHON="${PYTHON:-python3}"

APT_PACKAGES=(
    bind9-dnsutils         # dig
    dnsmasq-base           # a real upstream resolver for the tests and a peer in bench/
    unbound                # the other upstream and peer
    dnsperf                # bench/
    iproute2               # ip netns for the stub-resolver tests
    musl-tools             # musl-gcc: the Alpine (musl) stub resolver test
    golang-go              # builds the real go-rancher-metadata client
    golang-github-rancher-go-rancher-metadata-dev
    redis-server           # redis-repair: a real three-master cluster
    memcached              # render: real memcached pools
    etcd-server            # the fleet in etcd: a real etcd for the tests
)
BUILD_PACKAGES=(
    gcc                    # scripts/compile.py: the mypyc build of the DNS hot path (both modes)
    python3-dev            # ... and Python's headers for it
)

install_debian_packages() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        echo "bootstrap: not root or no apt-get; please install: ${missing[*]}" >&2
        return 0
    fi
    echo "bootstrap: apt-get install ${missing[*]}" >&2
    # Packages must not start system daemons (unbound would take port 53): deny service starts.
    local policy=/usr/sbin/policy-rc.d created=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && created=1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    [ "$created" = 1 ] && rm -f "$policy"
    return 0
}

if [ "$MODE" = test ]; then
    install_debian_packages "${BUILD_PACKAGES[@]}" "${APT_PACKAGES[@]}"
else
    install_debian_packages "${BUILD_PACKAGES[@]}"
fi
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
# pip runs only when the packaging changed since the last install (pyproject.toml or the
# constraints), so a start with a complete .venv needs no registry and takes no time. The stamp
# names what was installed: "test" includes "run".
generate_etcd_api() {
    .venv/bin/python scripts/gen_etcd_api.py || { echo "bootstrap: failed: etcd's API modules could not be generated" >&2; exit 1; }
}
STAMP=.venv/.metadns-installed
DIGEST="$(cat pyproject.toml constraints/tested.txt | sha256sum | cut -c1-32)"
if [ -f "$STAMP" ]; then
    read -r STAMPED_MODE STAMPED_DIGEST < "$STAMP" || true
    if [ "${STAMPED_DIGEST:-}" = "$DIGEST" ] && { [ "$STAMPED_MODE" = "$MODE" ] || [ "$STAMPED_MODE" = test ]; }; then
        generate_etcd_api
        exit 0
    fi
fi
echo "bootstrap: installing the package into .venv ($MODE)" >&2
.venv/bin/python -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
if [ "$MODE" = test ]; then
    .venv/bin/python -m pip install --quiet -c constraints/tested.txt -e '.[test,compiled,build]'
else
    .venv/bin/python -m pip install --quiet -c constraints/tested.txt -e '.[compiled,build]'
fi
echo "$MODE $DIGEST" > "$STAMP"
generate_etcd_api
