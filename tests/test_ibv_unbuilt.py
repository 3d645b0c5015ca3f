"""A build without the rdma-core headers (cmake -DSPEAD2_WITH_IBV=OFF) keeps
the whole ibverbs API, and every use of it raises a RuntimeError that says to
install libibverbs-dev and reinstall -- never an AttributeError.

Needs such a build: SPEAD2_NOIBV_PKG names a package directory made from it
(scripts/test.sh builds one into build/noibv-pkg).  Every case runs in a
subprocess with that package first on the path.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

PKG = os.environ.get("SPEAD2_NOIBV_PKG")
MESSAGE = "built without ibverbs: install libibverbs-dev and reinstall"

pytestmark = pytest.mark.skipif(
    not PKG, reason="set SPEAD2_NOIBV_PKG to a package built with -DSPEAD2_WITH_IBV=OFF (scripts/test.sh does)")

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import spead2, spead2.recv
    from spead2._spead2 import recv as _recv
    from spead2.tools import ibv_check
    out = {"file": spead2.__file__, "compiled": _recv._ibv_compiled}

    def stream():
        return spead2.recv.ChunkRingStream(
            spead2.ThreadPool(1), spead2.recv.StreamConfig(),
            spead2.recv.ChunkStreamConfig(place=ibv_check._ignore_all_place()),
            spead2.recv.ChunkRingbuffer(2), spead2.recv.ChunkRingbuffer(2))

    def attempt(key, fn):
        try:
            fn()
            out[key] = None
        except Exception as exc:
            out[key] = [type(exc).__name__, str(exc)]

    config = spead2.recv.UdpIbvConfig(endpoints=[("239.1.2.3", 7148)], interface_address="10.0.0.1")
    out["endpoints"] = config.endpoints
    s = stream()
    attempt("add", lambda: s.add_udp_ibv_reader(config))
    # Even an invalid configuration: the build is what is wrong.
    attempt("add_invalid", lambda: s.add_udp_ibv_reader(spead2.recv.UdpIbvConfig()))
    s.stop()
    attempt("config_validation", lambda: setattr(config, "max_size", 0))
    attempt("probe", lambda: _recv._ibv_probe(""))
    print(json.dumps(out))
    """
)


def run(code, *args, env_extra=None):
    env = dict(os.environ, PYTHONPATH=PKG, **(env_extra or {}))
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env,
                          timeout=120)


@pytest.mark.timeout(150)
def test_api_present_and_errors_clear():
    proc = run(SCRIPT)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["file"].startswith(PKG)
    assert out["compiled"] is False
    assert out["endpoints"] == [["239.1.2.3", 7148]]
    for key in ("add", "add_invalid", "probe"):
        assert out[key][0] == "RuntimeError", out[key]
        assert MESSAGE in out[key][1]
    assert out["config_validation"][0] == "ValueError"


@pytest.mark.timeout(150)
def test_send_api_present_and_errors_clear():
    code = textwrap.dedent(
        """
        import json
        import spead2, spead2.send, spead2.send.asyncio
        out = {}
        config = spead2.send.UdpIbvConfig(endpoints=[("239.1.2.3", 7148)], interface_address="10.0.0.1", ttl=4)
        out["ttl"] = config.ttl
        for key, cls, cfg in [("sync", spead2.send.UdpIbvStream, config),
                              ("asyncio", spead2.send.asyncio.UdpIbvStream, config),
                              ("invalid", spead2.send.UdpIbvStream, spead2.send.UdpIbvConfig())]:
            try:
                cls(spead2.ThreadPool(), spead2.send.StreamConfig(), cfg)
                out[key] = None
            except Exception as exc:
                out[key] = [type(exc).__name__, str(exc)]
        print(json.dumps(out))
        """
    )
    proc = run(code)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["ttl"] == 4
    for key in ("sync", "asyncio", "invalid"):
        assert out[key][0] == "RuntimeError", out[key]
        assert MESSAGE in out[key][1]
    proc = run("import sys; from spead2.tools import send; "
               "sys.exit(send.main(['--ibv', '--bind', '127.0.0.1', '--heaps', '1', '239.1.2.3:7148']))")
    assert proc.returncode != 0
    assert MESSAGE in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.timeout(150)
def test_ibv_interface_override_says_so():
    code = textwrap.dedent(
        """
        import spead2, spead2.recv
        from spead2.tools import ibv_check
        s = spead2.recv.ChunkRingStream(
            spead2.ThreadPool(1), spead2.recv.StreamConfig(),
            spead2.recv.ChunkStreamConfig(place=ibv_check._ignore_all_place()),
            spead2.recv.ChunkRingbuffer(2), spead2.recv.ChunkRingbuffer(2))
        try:
            s.add_udp_reader(7148, bind_hostname="239.1.2.3")
        except RuntimeError as exc:
            print("RuntimeError:", exc)
        s.stop()
        """
    )
    proc = run(code, env_extra={"SPEAD2_IBV_INTERFACE": "127.0.0.1"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("RuntimeError:") and MESSAGE in proc.stdout


@pytest.mark.timeout(150)
def test_check_and_recv_say_so():
    proc = run("import sys; from spead2.tools import ibv_check; sys.exit(ibv_check.main(['--json']))")
    assert proc.returncode == 1, proc.stderr
    facts = json.loads(proc.stdout)
    assert facts["compiled"] is False and not facts["usable"]
    assert "built without ibverbs" in facts["blockers"][0]["problem"]
    assert "libibverbs-dev" in facts["blockers"][0]["fix"]
    proc = run("import sys; from spead2.tools import recv; "
               "sys.exit(recv.main(['127.0.0.1:8000', '--ibv', '--interface', '127.0.0.1']))")
    assert proc.returncode == 1
    assert MESSAGE in proc.stderr and "Traceback" not in proc.stderr
