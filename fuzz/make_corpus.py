"""Make a seed corpus for fuzz_decoders from the bundled captures.

For each classic pcap capture, writes a few frames as mode-1..4 inputs (the
frame as captured, re-wrapped for each link type), their UDP payloads as
mode-0 inputs, and one concatenation of payloads as a chunk-stream input.
"""

import pathlib
import struct
import sys

LINK_MODES = {1: 1, 113: 2, 276: 3, 101: 4, 228: 4}


def frames(path):
    data = path.read_bytes()
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        endian = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        endian = ">"
    else:
        return None, []  # pcapng: covered by the pcap copies
    linktype = struct.unpack(endian + "I", data[20:24])[0]
    out = []
    pos = 24
    while pos + 16 <= len(data):
        _, _, caplen, _ = struct.unpack(endian + "IIII", data[pos:pos + 16])
        out.append(data[pos + 16:pos + 16 + caplen])
        pos += 16 + caplen
    return linktype, out


def udp_payload(linktype, frame):
    offset = {1: 14, 113: 16, 276: 20}.get(linktype, 0)
    ip = frame[offset:]
    ihl = (ip[0] & 0x0F) * 4
    return ip[ihl + 8:]


def main():
    src, dst = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    dst.mkdir(parents=True, exist_ok=True)
    n = 0
    for capture in sorted(src.glob("*.pcap")):
        linktype, fs = frames(capture)
        if linktype not in LINK_MODES:
            continue
        payloads = [udp_payload(linktype, f) for f in fs]
        for i, f in enumerate(fs[:4]):
            (dst / f"{capture.stem}-frame{i}").write_bytes(bytes([LINK_MODES[linktype]]) + f)
            (dst / f"{capture.stem}-packet{i}").write_bytes(b"\x00" + payloads[i])
        (dst / f"{capture.stem}-stream").write_bytes(b"\x05\x13" + b"".join(payloads[:12]))
        n += 1
    print(f"seed corpus: {len(list(dst.iterdir()))} files from {n} captures")


if __name__ == "__main__":
    main()
