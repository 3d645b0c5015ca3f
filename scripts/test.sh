#!/usr/bin/env bash
# Set up, then run the whole test suite:
#   1. pytest against the installed package;
#   2. the same suite against an ASAN+UBSAN build of the extension;
#   3. the libFuzzer target on the packet/frame decoders and the chunk core, time-bounded.
# Set SPEAD2_SKIP_ASAN=1 or SPEAD2_SKIP_FUZZ=1 to skip a stage; FUZZ_SECONDS (default 60).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
VENV=${SPEAD2_VENV:-$PWD/.venv}
export PATH="$VENV/bin:$PATH"   # the package's commands, and its Python first
PY="$VENV/bin/python"
root=$(pwd)

mkdir -p build
echo "== the README's demo, with only Debian's Python on PATH"
env -i HOME="$HOME" PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    SPEAD2_VENV="$VENV" bash scripts/demo.sh > build/demo.log 2>&1 \
  || { cat build/demo.log; echo "demo failed"; exit 1; }
tail -n 3 build/demo.log

echo "== documentation (Sphinx, warnings are errors)"
$PY -m sphinx -E -W -q -b html doc build/doc-html

echo "== 1/3 test suite (installed package)"
(cd tests && SPEAD2_EXPECT_IBV=1 $PY -m pytest -q -p no:cacheprovider "$root/tests")

echo "== a build without the rdma-core headers: the ibverbs API stays, and says how to get it"
pybind_dir=$($PY -m pybind11 --cmakedir)
cmake -S . -B build/noibv -G Ninja -DCMAKE_BUILD_TYPE=Release -DSPEAD2_WITH_IBV=OFF \
      -Dpybind11_DIR="$pybind_dir" -DPython_EXECUTABLE="$(command -v $PY)" -DSKBUILD_PROJECT_VERSION=noibv >/dev/null
cmake --build build/noibv -j2
rm -rf build/noibv-pkg && mkdir -p build/noibv-pkg
cp -r python/spead2 build/noibv-pkg/
cp build/noibv/_spead2*.so build/noibv-pkg/spead2/
(cd tests && SPEAD2_NOIBV_PKG="$root/build/noibv-pkg" $PY -m pytest -q -p no:cacheprovider test_ibv_unbuilt.py)

if [ "${SPEAD2_SKIP_ASAN:-0}" != "1" ]; then
  echo "== 2/3 test suite under AddressSanitizer + UndefinedBehaviorSanitizer"
  pybind_dir=$($PY -m pybind11 --cmakedir)
  cmake -S . -B build/asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSPEAD2_SANITIZE=ON \
        -DSPEAD2_CPP_TESTS=ON -Dpybind11_DIR="$pybind_dir" -DPython_EXECUTABLE="$(command -v $PY)" \
        -DSKBUILD_PROJECT_VERSION=asan >/dev/null
  cmake --build build/asan -j2
  echo "== C++ unit tests of the chunk core's parts (ASAN+UBSAN)"
  (cd build/asan && ctest --output-on-failure)
  rm -rf build/asan-pkg && mkdir -p build/asan-pkg
  cp -r python/spead2 build/asan-pkg/
  cp build/asan/_spead2*.so build/asan-pkg/spead2/
  mkdir -p build/asan-pkg/spead2/_ibv_emulator   # the test device, as a wheel ships it
  cp build/asan/libspead2_ibv_emulator.so build/asan-pkg/spead2/_ibv_emulator/
  asan_lib=$(gcc -print-file-name=libasan.so)
  ubsan_lib=$(gcc -print-file-name=libubsan.so)
  # Leak checking is off: CPython and numba keep allocations until exit by design.
  (cd tests && LD_PRELOAD="$asan_lib $ubsan_lib" \
     ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
     PYTHONPATH="$root/build/asan-pkg" SPEAD2_EXPECT_ASAN=1 \
     $PY -m pytest -q -p no:cacheprovider "$root/tests")
fi

echo "== emulated RDMA device self-test (ASAN+UBSAN)"
EMU_SANITIZE=1 EMU_RUN_SELFTEST=1 bash tests/ibv_emulator/build.sh build/emu-asan

if [ "${SPEAD2_SKIP_FUZZ:-0}" != "1" ]; then
  echo "== 3/3 fuzzing the decoders and the chunk core for ${FUZZ_SECONDS:-60} s"
  pybind_dir=$($PY -m pybind11 --cmakedir)
  CC=clang CXX=clang++ cmake -S . -B build/fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
        -DSPEAD2_SANITIZE=ON -DSPEAD2_FUZZ=ON -Dpybind11_DIR="$pybind_dir" \
        -DPython_EXECUTABLE="$(command -v $PY)" >/dev/null
  cmake --build build/fuzz -j2 --target fuzz_decoders
  rm -rf build/fuzz-corpus && mkdir -p build/fuzz-corpus
  $PY fuzz/make_corpus.py tests/data build/fuzz-corpus
  build/fuzz/fuzz_decoders -max_total_time="${FUZZ_SECONDS:-60}" -max_len=9000 \
      -print_final_stats=1 build/fuzz-corpus fuzz/corpus
fi
echo "== all tests passed"
