"""``spead2_ibv_check``: can this machine receive with ibverbs, and if not, why?

Lists the RDMA devices (with their network interfaces, ports, link layer,
flow-steering support and mlx5 multi-packet receive capabilities), the
process's capabilities, its locked-memory limit and the huge pages, then says
exactly what blocks the ibverbs fast path and how to fix each problem. With
``--interface ADDRESS`` it also finds the device that owns the address and
tries a real ``add_udp_ibv_reader`` on it (a unicast rule for
``ADDRESS:9``, removed at once) to show which reader it gets.

Exit status: 0 when nothing blocks the fast path, 1 otherwise.
Also available as ``spead2_recv --check-ibv``.
"""

import argparse
import ctypes
import fcntl
import json
import os
import resource
import socket
import struct
import sys

import spead2
import spead2.recv
from spead2._spead2 import recv as _recv

CAP_NET_RAW = 13
CAP_IPC_LOCK = 14
SIOCGIFADDR = 0x8915
#: The port of the trial reader's rule (the discard service: nobody sends there).
TRIAL_PORT = 9
FIX_LIBS = ("install the RDMA user-space libraries: apt install rdma-core ibverbs-providers "
            "(dnf install rdma-core libibverbs)")


def _capabilities():
    """The effective capability mask of this process (from /proc), or None."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except OSError:
        pass
    return None


def _meminfo():
    info = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("HugePages_Total", "HugePages_Free", "Hugepagesize"):
                    info[key] = int(rest.split()[0])
    except OSError:
        pass
    return info


def _ipv4_of(netdev):
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            req = struct.pack("256s", netdev.encode()[:15])
            return socket.inet_ntoa(fcntl.ioctl(s.fileno(), SIOCGIFADDR, req)[20:24])
    except OSError:
        return None


def _netdevs(ibdev):
    """The network interfaces of an RDMA device, from sysfs ([] if none)."""
    path = f"/sys/class/infiniband/{ibdev}/device/net"
    try:
        names = sorted(os.listdir(path))
    except OSError:
        return []
    out = []
    for name in names:
        try:
            with open(f"/sys/class/net/{name}/operstate") as f:
                state = f.read().strip()
        except OSError:
            state = "unknown"
        out.append({"name": name, "ipv4": _ipv4_of(name), "operstate": state})
    return out


def pinned_bytes(buffer_size):
    """What the MPRQ reader pins for ``buffer_size``: the buffer plus a 64-byte
    completion per 64-byte stride (the plain reader pins less)."""
    return 2 * buffer_size + (1 << 20)


def gather(interface="", buffer_size=None):
    """Everything the check looks at, as plain data."""
    buffer_size = buffer_size or spead2.recv.UdpIbvConfig.DEFAULT_BUFFER_SIZE
    facts = {
        "spead2_version": spead2.__version__,
        "compiled": bool(_recv._ibv_compiled),
        "library_override": os.environ.get("SPEAD2_IBV_LIBRARY_OVERRIDE", ""),
        "interface": interface,
        "buffer_size": buffer_size,
        "pinned_bytes": pinned_bytes(buffer_size),
    }
    facts["emulated"] = "spead2_ibv_emulator" in os.path.basename(facts["library_override"])
    if facts["compiled"]:
        facts["probe"] = _recv._ibv_probe(interface)
        for dev in facts["probe"]["devices"]:
            dev["netdevs"] = _netdevs(dev["name"])
    else:
        facts["probe"] = None
    caps = _capabilities()
    facts["cap_net_raw"] = None if caps is None else bool(caps >> CAP_NET_RAW & 1)
    facts["cap_ipc_lock"] = None if caps is None else bool(caps >> CAP_IPC_LOCK & 1)
    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    facts["memlock"] = {"soft": None if soft == resource.RLIM_INFINITY else soft,
                        "hard": None if hard == resource.RLIM_INFINITY else hard}
    facts["hugepages"] = _meminfo()
    return facts


_PLACE_SIGNATURE = b"void (void *, size_t)"
_PLACE_FN = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_size_t)(lambda data, size: None)


def _ignore_all_place():
    """A place callback (as a capsule tuple, like scipy.LowLevelCallable) that
    places nothing: the trial stream needs one, and needs no numba or scipy."""
    new = ctypes.pythonapi.PyCapsule_New
    new.restype = ctypes.py_object
    new.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
    return (new(ctypes.cast(_PLACE_FN, ctypes.c_void_p), _PLACE_SIGNATURE, None),)


def trial(interface, buffer_size=None):
    """Add a real ibverbs reader on ``interface``: its kind, or the error."""
    stream = spead2.recv.ChunkRingStream(
        spead2.ThreadPool(1), spead2.recv.StreamConfig(),
        spead2.recv.ChunkStreamConfig(place=_ignore_all_place()),
        spead2.recv.ChunkRingbuffer(2), spead2.recv.ChunkRingbuffer(2))
    try:
        config = spead2.recv.UdpIbvConfig(endpoints=[(interface, TRIAL_PORT)], interface_address=interface,
                                          comp_vector=0)
        if buffer_size:
            config.buffer_size = buffer_size
        stream.add_udp_ibv_reader(config)
        kinds = stream._ibv_reader_kinds()
        return {"reader": kinds[0] if kinds else None, "error": None}
    except Exception as exc:  # the reader's own message says what is wrong
        return {"reader": None, "error": f"{type(exc).__name__}: {exc}"}
    finally:
        stream.stop()


def _mib(n):
    return f"{n / (1 << 20):.0f} MiB"


def assess(facts):
    """(blockers, warnings): lists of {"problem", "fix"}."""
    blockers, warnings = [], []

    def block(problem, fix):
        blockers.append({"problem": problem, "fix": fix})

    def warn(problem, fix):
        warnings.append({"problem": problem, "fix": fix})

    python = os.path.realpath(sys.executable)
    if facts["cap_net_raw"] is False:
        block("this process lacks CAP_NET_RAW, which raw packet queues need",
              f"run as root, or grant it to the interpreter: sudo setcap cap_net_raw+ep {python} "
              "(in a container: --cap-add NET_RAW)")
    soft = facts["memlock"]["soft"]
    if soft is not None and not facts["cap_ipc_lock"] and soft < facts["pinned_bytes"]:
        block(f"the locked-memory limit (RLIMIT_MEMLOCK) is {soft // 1024} KiB; a reader with a "
              f"{_mib(facts['buffer_size'])} buffer pins about {_mib(facts['pinned_bytes'])}",
              "ulimit -l unlimited (hard limit permitting), LimitMEMLOCK=infinity in a systemd unit, a memlock "
              "line in /etc/security/limits.conf, --ulimit memlock=-1 for Docker; or grant CAP_IPC_LOCK; "
              "or use a smaller buffer_size")
    if os.environ.get("SPEAD2_IBV_NO_MPRQ", "") not in ("", "0"):
        warn("SPEAD2_IBV_NO_MPRQ is set: the plain reader is forced even where multi-packet receive works",
             "unset SPEAD2_IBV_NO_MPRQ")
    huge = facts["hugepages"]
    if huge.get("HugePages_Total", 0) == 0:
        warn("no huge pages are configured: receive buffers use ordinary pages (more TLB misses)",
             "echo 1024 | sudo tee /proc/sys/vm/nr_hugepages (or vm.nr_hugepages in /etc/sysctl.conf)")

    if not facts["compiled"]:
        block("this spead2 was built without ibverbs (the rdma-core headers were missing at build time)",
              "install libibverbs-dev and reinstall: apt install libibverbs-dev librdmacm-dev, then "
              "pip install --force-reinstall --no-binary spead2 spead2 (or rebuild from source)")
        return blockers, warnings
    probe = facts["probe"]
    if probe["verbs_error"]:
        block(f"libibverbs cannot be loaded: {probe['verbs_error']}", FIX_LIBS)
        return blockers, warnings
    if probe["rdmacm_error"]:
        block(f"librdmacm cannot be loaded: {probe['rdmacm_error']}", FIX_LIBS)
    devices = probe["devices"]
    if not devices:
        block("no RDMA devices found",
              "check for a ConnectX NIC (lspci | grep -i mellanox), load its RDMA driver (modprobe mlx5_ib), "
              "check `rdma link` / ibv_devices; in a container pass --device /dev/infiniband")
        return blockers, warnings
    if facts["interface"]:
        if probe["interface_error"]:
            names = ", ".join(f"{n['name']} ({n['ipv4']})" for d in devices for n in d.get("netdevs", [])
                              if n["ipv4"]) or "none with an IPv4 address"
            block(f"interface {facts['interface']}: {probe['interface_error']}",
                  f"use the IPv4 address of an RDMA-capable port (network interfaces of RDMA devices: {names}); "
                  "check that the port's RDMA driver is loaded")
            relevant = devices
        else:
            relevant = [d for d in devices if d["name"] == probe["interface_device"]]
    else:
        relevant = devices

    usable = []
    for dev in relevant:
        name = dev["name"]
        if dev["error"]:
            warn(f"device {name} cannot be queried: {dev['error']}",
                 "check the permissions of /dev/infiniband/uverbs* (in a container: --device /dev/infiniband)")
            continue
        port_ok = [p for p in dev["ports"] if p["link_layer"] == "ethernet"]
        problems = []
        if not port_ok:
            problems.append((f"device {name} has no Ethernet port (raw packet queues need Ethernet; "
                             f"its ports are {', '.join(p['link_layer'] for p in dev['ports']) or 'none'})",
                             f"switch the port to Ethernet: mlxconfig -d {name} set LINK_TYPE_P1=2, then reboot"))
        elif not any(p["state"] == "active" for p in port_ok):
            problems.append((f"the link of device {name} is down",
                             "check the cable and switch port; ip link set <netdev> up"))
        if not dev["flow_steering"]:
            problems.append((f"device {name} does not support flow steering",
                             "ConnectX-4 or later (ConnectX-3 Pro: options mlx4_core log_num_mgm_entry_size=-1), "
                             "with current firmware"))
        if problems:
            for p in problems:
                (block if facts["interface"] or len(relevant) == 1 else warn)(*p)
            continue
        usable.append(dev)
        if not (dev["striding_rq"] and dev["striding_rq_raw_packet"]):
            warn(f"device {name}: no multi-packet receive queue ({dev['mprq_note'] or 'not offered'}); "
                 "the plain reader (one work request per packet) is used, which costs more CPU per packet",
                 "use a ConnectX-5 or later with the mlx5 provider (ibverbs-providers) and current firmware")
    if relevant and not usable and not facts["interface"] and len(relevant) > 1:
        block("no RDMA device is usable (see the warnings)", "fix one of the devices as described")
    return blockers, warnings


def run(interface="", buffer_size=None, do_trial=True):
    facts = gather(interface, buffer_size)
    blockers, warnings = assess(facts)
    facts["trial"] = None
    if interface and do_trial and facts["compiled"] and not facts["probe"]["verbs_error"]:
        facts["trial"] = trial(interface, buffer_size)
        if facts["trial"]["error"] and not blockers:
            blockers.append({"problem": f"a trial reader on {interface} failed: {facts['trial']['error']}",
                             "fix": "see the message (it names the cause)"})
    facts["blockers"] = blockers
    facts["warnings"] = warnings
    facts["usable"] = not blockers
    return facts


def _yes(flag):
    return "unknown" if flag is None else ("yes" if flag else "NO")


def report(facts, out=sys.stdout):
    def line(label, text=""):
        print(f"{label:<13}{text}", file=out)

    print("spead2_ibv_check: can this machine receive SPEAD with ibverbs?\n", file=out)
    line("spead2", f"{facts['spead2_version']}, " + ("built with ibverbs" if facts["compiled"]
                                                      else "built WITHOUT ibverbs"))
    probe = facts["probe"]
    if probe is not None:
        libs = []
        for name, key in (("libibverbs", "verbs_error"), ("librdmacm", "rdmacm_error"), ("libmlx5", "mlx5_error")):
            libs.append(f"{name}: {'loaded' if not probe[key] else 'MISSING'}")
        line("libraries", "   ".join(libs))
        if facts["library_override"]:
            label = "the EMULATED TEST DEVICE, not a NIC" if facts["emulated"] else "an override"
            line("", f"(SPEAD2_IBV_LIBRARY_OVERRIDE={facts['library_override']}: {label})")
        line("devices", "" if probe["devices"] else "none")
        for dev in probe["devices"]:
            print(f"  {dev['name']}", file=out)
            if dev["error"]:
                print(f"    error: {dev['error']}", file=out)
                continue
            netdevs = ", ".join(f"{n['name']} ({n['ipv4'] or 'no IPv4'}, {n['operstate']})" for n in dev["netdevs"])
            print(f"    netdevs: {netdevs or '(none in sysfs)'}   firmware: {dev['fw_ver'] or '?'}", file=out)
            for p in dev["ports"]:
                print(f"    port {p['port']}: {p['link_layer']}, {p['state']}, MTU {p['active_mtu']}", file=out)
            print(f"    flow steering: {_yes(dev['flow_steering'])}", file=out)
            if dev["striding_rq"]:
                s0, s1 = dev["stride_log_bytes"]
                w0, w1 = dev["wqe_log_strides"]
                print(f"    MPRQ (striding RQ): yes, strides 2^{s0}..2^{s1} bytes, 2^{w0}..2^{w1} per work request, "
                      f"raw packet: {_yes(dev['striding_rq_raw_packet'])}", file=out)
            else:
                print(f"    MPRQ (striding RQ): NO ({dev['mprq_note']})", file=out)
            print(f"    limits: max_qp_wr {dev['max_qp_wr']}, max_cqe {dev['max_cqe']}, "
                  f"max_mr_size {dev['max_mr_size']}, completion vectors {dev['num_comp_vectors']}", file=out)
        if facts["interface"]:
            where = (f"{probe['interface_device']} port {probe['interface_port']}" if probe["interface_device"]
                     else probe["interface_error"])
            line("interface", f"{facts['interface']}: {where}")
    if facts.get("trial"):
        t = facts["trial"]
        line("trial", "add_udp_ibv_reader: " + (f"ok, {t['reader']} reader" if t["reader"] else t["error"]))
    soft = facts["memlock"]["soft"]
    line("process", f"CAP_NET_RAW: {_yes(facts['cap_net_raw'])}   CAP_IPC_LOCK: {_yes(facts['cap_ipc_lock'])}   "
                    f"memlock: {'unlimited' if soft is None else f'{soft // 1024} KiB'} "
                    f"(a {_mib(facts['buffer_size'])} buffer pins about {_mib(facts['pinned_bytes'])})")
    huge = facts["hugepages"]
    line("huge pages", f"{huge.get('HugePages_Total', 0)} configured, {huge.get('HugePages_Free', 0)} free, "
                       f"{huge.get('Hugepagesize', 0)} kB each")
    print(file=out)
    if facts["blockers"]:
        print("RESULT: the ibverbs fast path is BLOCKED:", file=out)
        for i, b in enumerate(facts["blockers"], 1):
            print(f"  {i}. {b['problem']}\n     fix: {b['fix']}", file=out)
    else:
        reader = facts["trial"]["reader"] if facts.get("trial") else None
        what = f" ({reader} reader)" if reader else ""
        print(f"RESULT: nothing blocks the ibverbs fast path{what}.", file=out)
        if facts["emulated"]:
            print("        (on the emulated test device: this proves the set-up, not a NIC)", file=out)
    if facts["warnings"]:
        print("warnings:", file=out)
        for w in facts["warnings"]:
            print(f"  - {w['problem']}\n    fix: {w['fix']}", file=out)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="spead2_ibv_check",
        description="Report whether spead2 can receive with ibverbs here, what blocks it and how to fix it.")
    parser.add_argument("--interface", default="", metavar="ADDRESS",
                        help="IPv4 address of the NIC port to use: find its device and try a reader on it")
    parser.add_argument("--buffer-size", type=int, default=None, metavar="BYTES",
                        help="receive buffer size to check the memlock limit against [16 MiB]")
    parser.add_argument("--no-trial", action="store_true", help="with --interface, do not try a reader")
    parser.add_argument("--json", action="store_true", help="print the findings as one JSON object")
    args = parser.parse_args(argv)
    try:
        facts = run(args.interface, args.buffer_size, not args.no_trial)
    except ValueError as exc:
        parser.error(str(exc))
    if args.json:
        print(json.dumps(facts, indent=1))
    else:
        report(facts)
    return 0 if facts["usable"] else 1


if __name__ == "__main__":
    sys.exit(main())
