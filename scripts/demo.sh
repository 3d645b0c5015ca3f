#!/usr/bin/env bash
# Set up (see scripts/setup.sh), then replay the bundled captures into chunks
# and print what arrived.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
VENV=${SPEAD2_VENV:-$PWD/.venv}
cd tests/data   # run outside the source tree so the installed package is used
exec "$VENV/bin/python" -m spead2.tools.demo ./*.pcap ./*.pcapng
