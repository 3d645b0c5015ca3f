#!/usr/bin/env bash
# Install what spead2 needs on a fresh Debian machine, idempotently.
#   scripts/setup.sh            system packages + the package with its numba extra
#   scripts/setup.sh test       ... plus what the test suite needs (clang for the fuzzer)
set -euo pipefail
cd "$(dirname "$0")/.."

# libpcap-dev: BPF filters for pcap replay; libibverbs-dev/librdmacm-dev:
# headers for the ibverbs receiver (the libraries are loaded at run time).
want=(build-essential libpcap-dev libibverbs-dev librdmacm-dev)
if [ "${1:-}" = "test" ]; then
  want+=(clang libclang-rt-14-dev)
fi
missing=()
for pkg in "${want[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "Installing system packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi

PY=${PYTHON:-python3}
extras="numba"
[ "${1:-}" = "test" ] && extras="test"
# Build dependencies come from PyPI in an isolated build environment.
$PY -m pip install -q ".[${extras}]"
