#!/bin/bash
# Builds the emulated RDMA NIC into OUTDIR (idempotent):
#   OUTDIR/libspead2_ibv_emulator.so and OUTDIR/spead2_ibv_emulator_selftest
#
#   tests/ibv_emulator/build.sh OUTDIR            # optimised build
#   EMU_SANITIZE=1 tests/ibv_emulator/build.sh OUTDIR   # ASAN+UBSAN build
#   EMU_RUN_SELFTEST=1 tests/ibv_emulator/build.sh OUTDIR  # ... and run the selftest
#
# Uses cmake (+ninja when available); falls back to plain g++ otherwise.
set -euo pipefail
if [ $# -ne 1 ]; then
  echo "usage: $0 OUTDIR" >&2
  exit 2
fi
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
mkdir -p "$1"
out="$(cd "$1" && pwd)"
san="${EMU_SANITIZE:-0}"
if [ "$san" != 0 ]; then san_cmake=ON; else san_cmake=OFF; fi

if command -v cmake >/dev/null 2>&1; then
  bdir="$out/cmake-build"
  gen=()
  if [ ! -f "$bdir/CMakeCache.txt" ] && command -v ninja >/dev/null 2>&1; then
    gen=(-G Ninja)
  fi
  cmake -S "$here" -B "$bdir" "${gen[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DEMU_SANITIZE="$san_cmake" >/dev/null
  cmake --build "$bdir"
  cp -f "$bdir/libspead2_ibv_emulator.so" "$out/libspead2_ibv_emulator.so.new"
  mv -f "$out/libspead2_ibv_emulator.so.new" "$out/libspead2_ibv_emulator.so"
  cp -f "$bdir/spead2_ibv_emulator_selftest" "$out/spead2_ibv_emulator_selftest.new"
  mv -f "$out/spead2_ibv_emulator_selftest.new" "$out/spead2_ibv_emulator_selftest"
else
  flags=(-std=c++17 -O2 -g -Wall -Wextra -pthread)
  if [ "$san" != 0 ]; then
    flags+=(-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer)
  fi
  g++ "${flags[@]}" -shared -fPIC -fvisibility=hidden \
    -Wl,--version-script="$here/exports.map" -Wl,-Bsymbolic -Wl,--no-undefined \
    -o "$out/libspead2_ibv_emulator.so.new" "$here/emulator.cpp"
  mv -f "$out/libspead2_ibv_emulator.so.new" "$out/libspead2_ibv_emulator.so"
  g++ "${flags[@]}" -I"$here" -o "$out/spead2_ibv_emulator_selftest.new" "$here/selftest.cpp" \
    -L"$out" -lspead2_ibv_emulator -Wl,-rpath,"$out"
  mv -f "$out/spead2_ibv_emulator_selftest.new" "$out/spead2_ibv_emulator_selftest"
fi

if [ "${EMU_RUN_SELFTEST:-0}" != 0 ]; then
  "$out/spead2_ibv_emulator_selftest"
fi
echo "$out/libspead2_ibv_emulator.so"
