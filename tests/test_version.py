"""The version states the reference API level, so pip keeps this package for
programs that depend on the reference (e.g. ``spead2>=4.3``)."""

import importlib.metadata
import json
import pathlib
import re
import subprocess
import sys
import zipfile

import pytest

import spead2

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_version_scheme():
    assert re.fullmatch(r"4\.5\.1\+reimpl\.\d+(\.\d+)*", spead2.__version__), spead2.__version__
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'version = "{spead2.__version__}"' in pyproject


def test_installed_metadata_matches():
    try:
        installed = importlib.metadata.version("spead2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("spead2 is not installed as a distribution (run from a build tree)")
    assert installed == spead2.__version__


def _wheel_requiring(path, requirement):
    """A minimal wheel whose only content is a dependency on `requirement`."""
    name = "needs_spead2"
    dist = f"{name}-1.0.dist-info"
    files = {
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\nRequires-Dist: {requirement}\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files[f"{dist}/RECORD"] = "".join(f"{n},,\n" for n in files) + f"{dist}/RECORD,,\n"
    wheel = path / f"{name}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for n, text in files.items():
            z.writestr(n, text)
    return wheel


@pytest.mark.parametrize("requirement", ["spead2>=4.3", "spead2>=4.3.1,<5", "spead2~=4.5"])
def test_dependents_keep_this_package(tmp_path, requirement):
    """pip resolves a dependent of the reference without touching this package."""
    try:
        importlib.metadata.version("spead2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("spead2 is not installed as a distribution (run from a build tree)")
    wheel = _wheel_requiring(tmp_path, requirement)
    report = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-index",
                           "--disable-pip-version-check", "--report", str(report), str(wheel)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    to_install = [item["metadata"]["name"] for item in json.loads(report.read_text())["install"]]
    assert to_install == ["needs_spead2"]
