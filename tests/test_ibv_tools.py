"""Making the ibverbs path usable: the always-present API, ``spead2_ibv_check``
(also ``spead2_recv --check-ibv``) and the packaged emulated test device
(``spead2.tools.ibv_emulator``).

The check runs in a subprocess per configuration of the emulated device (the
libraries are loaded once per process, and the emulator reads its
configuration once).  "No device at all" is covered both by the emulator's
``SPEAD2_EMU_NO_DEVICES`` and by a missing library.
"""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

import spead2
import spead2.recv
from spead2._spead2 import recv as _recv
from spead2.tools import ibv_emulator

from emu_util import UNPRIVILEGED_MEMLOCK


ROOT = pathlib.Path(__file__).resolve().parent.parent

needs_ibv = pytest.mark.skipif(not _recv._ibv_compiled, reason="spead2 was built without the ibverbs headers")


def test_ibv_api_always_present():
    """UdpIbvConfig and add_udp_ibv_reader exist in every build."""
    assert "UdpIbvConfig" in spead2.recv.__all__
    config = spead2.recv.UdpIbvConfig(endpoints=[("239.1.2.3", 7148)], interface_address="10.0.0.1")
    assert config.endpoints == [("239.1.2.3", 7148)]
    assert hasattr(spead2.recv.ChunkRingStream, "add_udp_ibv_reader")
    assert hasattr(spead2.recv.ChunkStreamGroupMember, "add_udp_ibv_reader")
    assert isinstance(_recv._ibv_compiled, bool)


def check_env(emulator, **options):  # noqa: F811
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPEAD2_EMU_")}
    return ibv_emulator.environment(emulator, base=env, **options)


#: Runs the check after optionally dropping capabilities and lowering the
#: memlock limit, as an unprivileged user would be.
CHECK = UNPRIVILEGED_MEMLOCK + textwrap.dedent(
    """
    import json, resource, sys
    opts = json.loads(sys.argv[1])
    if opts.get("memlock") is not None:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (opts["memlock"], opts["memlock"]))
    if opts.get("drop_caps"):
        assert drop_caps(opts["drop_caps"])
    from spead2.tools import ibv_check, recv
    main = recv.main if opts.get("via_recv") else ibv_check.main
    sys.exit(main(opts["argv"]))
    """
)


def run_check(env, *argv, json_out=True, timeout=120, **opts):
    argv = list(argv) + (["--json"] if json_out else [])
    proc = subprocess.run([sys.executable, "-c", CHECK, json.dumps({"argv": argv, **opts})], env=env,
                          capture_output=True, text=True, timeout=timeout, cwd=str(ROOT / "tests"))
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr
    if not json_out:
        return proc.returncode, proc.stdout
    facts = json.loads(proc.stdout)
    assert proc.returncode == (0 if facts["usable"] else 1)
    return proc.returncode, facts


def problems(facts):
    return " | ".join(b["problem"] for b in facts["blockers"])


@needs_ibv
@pytest.mark.timeout(120)
def test_check_emulated_device_usable(emulator):  # noqa: F811
    rc, facts = run_check(check_env(emulator), "--interface", "127.0.0.1")
    assert rc == 0, facts["blockers"]
    assert facts["emulated"]
    (dev,) = facts["probe"]["devices"]
    assert dev["name"] == "emu0"
    assert dev["flow_steering"] and dev["striding_rq"] and dev["striding_rq_raw_packet"]
    assert dev["stride_log_bytes"] == [6, 13] and dev["wqe_log_strides"] == [3, 16]
    assert dev["ports"] == [{"port": 1, "state": "active", "link_layer": "ethernet", "active_mtu": 4096}]
    assert facts["probe"]["interface_device"] == "emu0" and facts["probe"]["interface_port"] == 1
    assert facts["trial"] == {"reader": "mprq", "error": None}


@needs_ibv
@pytest.mark.timeout(120)
def test_check_text_report_and_recv_option(emulator):  # noqa: F811
    rc, text = run_check(check_env(emulator), "--check-ibv", "--interface", "127.0.0.1", json_out=False,
                         via_recv=True)
    assert rc == 0
    assert "EMULATED TEST DEVICE" in text
    assert "emu0" in text and "flow steering: yes" in text and "MPRQ (striding RQ): yes" in text
    assert "RESULT: nothing blocks the ibverbs fast path (mprq reader)" in text


@needs_ibv
@pytest.mark.timeout(120)
def test_check_without_mprq_warns_and_uses_plain(emulator):  # noqa: F811
    rc, facts = run_check(check_env(emulator, no_mprq=1), "--interface", "127.0.0.1")
    assert rc == 0
    assert facts["trial"]["reader"] == "plain"
    (dev,) = facts["probe"]["devices"]
    assert not dev["striding_rq"] and dev["mprq_note"]
    assert any("no multi-packet receive queue" in w["problem"] for w in facts["warnings"])


@needs_ibv
@pytest.mark.timeout(120)
def test_check_without_flow_steering_is_blocked(emulator):  # noqa: F811
    rc, facts = run_check(check_env(emulator, no_mprq=1, no_flow=1), "--interface", "127.0.0.1")
    assert rc == 1
    assert "does not support flow steering" in problems(facts)
    assert "flow steering" in facts["trial"]["error"]


@needs_ibv
@pytest.mark.timeout(120)
def test_check_old_flow_abi_is_fine(emulator):  # noqa: F811
    rc, facts = run_check(check_env(emulator, old_flow_abi=1), "--interface", "127.0.0.1")
    assert rc == 0 and facts["trial"]["reader"] == "mprq"


@needs_ibv
@pytest.mark.timeout(120)
def test_check_raw_queue_refused_names_cap_net_raw(emulator):  # noqa: F811
    """The device refuses raw packet queues (as without CAP_NET_RAW): the trial says so."""
    rc, facts = run_check(check_env(emulator, no_raw=1), "--interface", "127.0.0.1")
    assert rc == 1
    assert "CAP_NET_RAW" in problems(facts)


@needs_ibv
@pytest.mark.timeout(120)
def test_check_capabilities_and_memlock(emulator):  # noqa: F811
    """Without CAP_NET_RAW and CAP_IPC_LOCK and with an 8 MiB memlock limit, both block, with fixes."""
    if os.geteuid() != 0:
        pytest.skip("needs to start with the capabilities it drops (run as root)")
    rc, facts = run_check(check_env(emulator), "--interface", "127.0.0.1", "--no-trial",
                          memlock=8 << 20, drop_caps=[13, 14])
    assert rc == 1
    assert facts["cap_net_raw"] is False and facts["cap_ipc_lock"] is False
    text = json.dumps(facts["blockers"])
    assert "CAP_NET_RAW" in text and "setcap cap_net_raw+ep" in text
    assert "RLIMIT_MEMLOCK" in text and "ulimit -l" in text and "LimitMEMLOCK" in text
    # A buffer small enough for the limit is not blocked by it.
    rc, facts = run_check(check_env(emulator), "--buffer-size", str(2 << 20), memlock=8 << 20, drop_caps=[14])
    assert rc == 0, facts["blockers"]


@needs_ibv
@pytest.mark.timeout(120)
def test_check_no_device(emulator):  # noqa: F811
    rc, facts = run_check(check_env(emulator, no_devices=1), "--interface", "127.0.0.1")
    assert rc == 1
    assert facts["probe"]["devices"] == []
    assert "no RDMA devices found" in problems(facts)
    assert "modprobe mlx5_ib" in json.dumps(facts["blockers"])


@needs_ibv
@pytest.mark.timeout(120)
def test_check_interface_not_owned(emulator):  # noqa: F811
    rc, facts = run_check(check_env(emulator), "--interface", "127.0.0.2")
    assert rc == 1
    assert "interface 127.0.0.2: no RDMA device owns it" in problems(facts)


@needs_ibv
@pytest.mark.timeout(120)
def test_check_library_missing(tmp_path):
    env = dict(os.environ, SPEAD2_IBV_LIBRARY_OVERRIDE=str(tmp_path / "no-such-libibverbs.so"))
    rc, facts = run_check(env, "--interface", "127.0.0.1")
    assert rc == 1
    assert "libibverbs cannot be loaded" in problems(facts)
    assert "apt install rdma-core" in json.dumps(facts["blockers"])
    assert facts["trial"] is None


def test_check_rejects_a_bad_interface():
    proc = subprocess.run([sys.executable, "-m", "spead2.tools.ibv_check", "--interface", "not-an-address"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "not-an-address" in proc.stderr


# ----------------------------------------------------- the packaged test device

@needs_ibv
@pytest.mark.timeout(600)
def test_emulator_helper_builds_a_working_device(tmp_path):
    """python -m spead2.tools.ibv_emulator build DIR compiles the bundled sources
    (here: the source tree's) into a library the check can use."""
    proc = subprocess.run([sys.executable, "-m", "spead2.tools.ibv_emulator", "build", str(tmp_path)],
                          capture_output=True, text=True, timeout=580)
    assert proc.returncode == 0, proc.stderr
    lib = pathlib.Path(proc.stdout.strip())
    assert lib == tmp_path / ibv_emulator.LIBRARY_NAME and lib.is_file()
    rc, facts = run_check(check_env(lib), "--interface", "127.0.0.1")
    assert rc == 0 and facts["trial"]["reader"] == "mprq"
    # Up to date: a second build does nothing.
    mtime = lib.stat().st_mtime_ns
    assert ibv_emulator.build(tmp_path) == lib and lib.stat().st_mtime_ns == mtime


def test_emulator_helper_env_and_sources(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "spead2.tools.ibv_emulator", "sources"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    src = pathlib.Path(proc.stdout.strip())
    assert (src / "emulator.cpp").is_file() and (src / "exports.map").is_file()
    env = ibv_emulator.environment(tmp_path / "lib.so", wire="udp:127.0.0.1:9999", base={}, no_mprq=1)
    assert env == {"SPEAD2_IBV_LIBRARY_OVERRIDE": str(tmp_path / "lib.so"), "SPEAD2_EMU_INTERFACE": "127.0.0.1",
                   "SPEAD2_EMU_WIRE": "udp:127.0.0.1:9999", "SPEAD2_EMU_NO_MPRQ": "1"}


def test_emulator_build_error_is_clear(tmp_path):
    for name in ibv_emulator.SOURCES:
        (tmp_path / name).write_text("#include <no/such/header.h>\n" if name == "emulator.cpp" else "")
    with pytest.raises(ibv_emulator.BuildError, match="compiling the emulator failed"):
        ibv_emulator.build(tmp_path / "out", source=tmp_path)


@needs_ibv
@pytest.mark.timeout(120)
def test_packaged_emulator_is_used_by_default():
    """A package built with the rdma-core headers ships the test device, and the
    helper (and so spead2_bench) uses it without a source tree."""
    lib = ibv_emulator.packaged_library()
    if lib is None:
        pytest.skip("this package has no spead2/_ibv_emulator (a development tree: copy "
                    "build/<dir>/libspead2_ibv_emulator.so there, or install with pip)")
    assert ibv_emulator.library() == lib
    rc, facts = run_check(check_env(lib), "--interface", "127.0.0.1")
    assert rc == 0 and facts["emulated"]
