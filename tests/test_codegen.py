"""Checks on the compiled extension's machine code.

GCC 12 silently deleted the buffer and pcap readers' whole-packet prefetch
loops (a loop containing only __builtin_prefetch, provably finite, counts as
dead code), which cost a factor of ~3 in in-memory replay speed without any
functional symptom.  src/common/prefetch.h now emits the prefetch with an asm
statement; these tests make sure the instructions are really in the hot loops.
"""

import platform
import re
import shutil
import subprocess

import pytest

import spead2._spead2

pytestmark = [
    pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"),
                       reason="checks x86-64 prefetch instructions"),
    pytest.mark.skipif(shutil.which("objdump") is None, reason="objdump (binutils) not installed"),
]


@pytest.fixture(scope="module")
def functions():
    """Map of demangled function name -> its disassembly (one string)."""
    out = subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", "-C", spead2._spead2.__file__],
        check=True, capture_output=True, text=True,
    ).stdout
    result = {}
    current = None
    for line in out.splitlines():
        m = re.match(r"^[0-9a-f]+ <(.*)>:$", line)
        if m:
            current = re.sub(r"@@.*$", "", m.group(1))
            result[current] = []
        elif current is not None:
            result[current].append(line)
    if not any("buffer_reader::run" in name for name in result):
        pytest.skip("extension has no symbol table (stripped build)")
    return {name: "\n".join(lines) for name, lines in result.items()}


def _body(functions, fragment):
    matches = [body for name, body in functions.items() if fragment in name]
    assert matches, f"no function named like {fragment!r} in the extension"
    return "\n".join(matches)


# Both readers that walk packets laid out in memory prefetch whole packets ahead
# (transport/reader.h).
@pytest.mark.parametrize("function", [
    "spead2::transport::pcap_reader::run_batch()",
    "spead2::transport::buffer_reader::run()",
    "spead2::chunk::chunk_stream::batch_packets(",
])
def test_hot_loops_prefetch(functions, function):
    assert re.search(r"\bprefetch", _body(functions, function)), \
        f"{function} contains no prefetch instruction: the compiler dropped the software prefetch"


def test_multi_packet_heaps_prefetch_destination(functions):
    """process_packet prefetches the next packets' destination for writing."""
    bodies = "\n".join(body for name, body in functions.items()
                       if "chunk_stream::process_packet" in name
                       or "chunk_stream::prefetch_next_destination" in name)
    assert "prefetchw" in bodies


def test_single_packet_heaps_prefetch_destination(functions):
    """process_single prefetches the predicted next heap's destination for writing."""
    bodies = "\n".join(body for name, body in functions.items()
                       if "chunk_stream::process_single" in name
                       or "chunk_stream::prefetch_next_single" in name)
    assert "prefetchw" in bodies
