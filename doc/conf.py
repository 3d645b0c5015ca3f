# Sphinx configuration for the spead2 chunking receiver documentation.
#
# Build from the repository root with:
#     python3 -m sphinx -W -b html doc doc/_build/html
# No extensions are used, so the build needs neither network access nor an
# importable spead2.

import os
import re

_here = os.path.dirname(os.path.abspath(__file__))


def _read_version():
    path = os.path.join(_here, os.pardir, "python", "spead2", "_version.py")
    with open(path, encoding="utf-8") as f:
        match = re.search(r'__version__\s*=\s*"([^"]+)"', f.read())
    return match.group(1) if match else "unknown"


project = "spead2"
author = "the spead2 re-implementation developers"
copyright = "the spead2 re-implementation developers"
release = _read_version()
version = release

extensions = []
root_doc = "index"
exclude_patterns = ["_build"]
default_role = "code"
highlight_language = "python3"
pygments_style = "sphinx"

html_theme = "alabaster"
html_title = f"spead2 {release}: chunking receiver"
html_theme_options = {
    "description": "Receive SPEAD streams straight into chunks",
    "fixed_sidebar": True,
}
