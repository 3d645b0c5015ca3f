#!/usr/bin/env bash
# Install what spead2 needs on a fresh Debian machine (bookworm or trixie),
# idempotently, into a virtualenv made with Debian's own Python (PEP 668: the
# system Python is never pip-installed into):
#   scripts/setup.sh         system packages, then .venv with the package and its numba extra
#   scripts/setup.sh test    ... plus what the test suite needs (pytest, sphinx, clang for the fuzzer)
# SPEAD2_VENV chooses the virtualenv (default: .venv in the repository).  Runs as
# root or through sudo; never prompts.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-}

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

apt_install() {
  local missing=()
  for pkg in "$@"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "Installing system packages: ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
}

# Python with venv and headers, a compiler, CMake and Ninja for the build;
# libpcap-dev: BPF filters for pcap replay; libibverbs-dev/librdmacm-dev:
# headers for the ibverbs receiver (the libraries are loaded at run time).
want=(python3 python3-venv python3-dev python3-pip build-essential cmake ninja-build
      libpcap-dev libibverbs-dev librdmacm-dev)
[ "$mode" = "test" ] && want+=(clang)
apt_install "${want[@]}"
if [ "$mode" = "test" ]; then
  # The fuzzer needs clang's runtime libraries, packaged per clang version.
  clang_major=$(clang --version | sed -n 's/.*clang version \([0-9][0-9]*\).*/\1/p' | head -n1)
  for pkg in "libclang-rt-${clang_major}-dev" "libclang-common-${clang_major}-dev"; do
    if apt-cache show "$pkg" >/dev/null 2>&1; then
      apt_install "$pkg"
      break
    fi
  done
fi

VENV=${SPEAD2_VENV:-$PWD/.venv}
if ! "$VENV/bin/python" -c "import sys" >/dev/null 2>&1; then
  echo "Creating the virtualenv $VENV with $(/usr/bin/python3 --version)"
  rm -rf "$VENV"
  /usr/bin/python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
extras="numba"
if [ "$mode" = "test" ]; then
  extras="test"
  # The sanitizer and fuzzer builds call CMake directly: they need pybind11 here.
  "$PY" -m pip install -q --disable-pip-version-check pybind11 scikit-build-core
fi
# Build dependencies come from PyPI in an isolated build environment.
"$PY" -m pip install -q --disable-pip-version-check ".[${extras}]"
echo "spead2 is installed in $VENV (use it with: source $VENV/bin/activate)"
