#!/usr/bin/env bash
# Set up, then replay the bundled captures into chunks and print what arrived.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cd tests/data   # run outside the source tree so the installed package is used
exec "${PYTHON:-python3}" -m spead2.tools.demo ./*.pcap ./*.pcapng
