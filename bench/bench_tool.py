"""spead2_bench's package (``python/spead2/tools/bench``) for the scripts in
this directory, loaded by path the way spead2_bench's own subprocesses load
it: only the standard library at import, so a worker running under the
reference spead2 uses the same traffic, placement and measurement code."""

import importlib
import os
import runpy

#: The package in this source tree.
PACKAGE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "python", "spead2", "tools",
                           "bench")


def load(module, directory=None):
    """Module ``module`` (``traffic``, ``worker``, ...) of the package in
    ``directory`` (default: this source tree's)."""
    directory = os.path.normpath(directory or PACKAGE_DIR)
    package = runpy.run_path(os.path.join(directory, "session.py"))["load_package"](directory)
    return importlib.import_module(f"{package.__name__}.{module}")
