"""Where the project's shipped files are found: the checkout's ``resources/``, else the installed copy.

A path in the configuration is relative to the working directory (as in Snakemake). The project's own
data set and tables live in ``resources/`` of the checkout; a wheel (``pip install .``) ships the same
files as the data package ``moe_mlip_resources``. :func:`resolve` returns a path unchanged when it exists
(or a glob matches it) in the working directory, and otherwise, for a path under ``resources/``, the
installed copy, so that the default configuration works outside the checkout.

>>> resolve("no/such/file.extxyz")
'no/such/file.extxyz'
"""

from __future__ import annotations

import glob
from pathlib import Path

PACKAGE = "moe_mlip_resources"
PREFIX = "resources/"


def installed_root() -> Path | None:
    """The installed copy of ``resources/`` (a directory), or None when the package is not installed."""
    from importlib.util import find_spec

    spec = find_spec(PACKAGE)  # a namespace package (no __init__.py): its directories are its locations
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        if Path(location).is_dir():
            return Path(location)
    return None


def resolve(path: str | Path) -> str:
    """``path`` if it exists or matches a glob in the working directory; else the installed copy of a
    ``resources/...`` path when it exists; else ``path`` unchanged (the caller reports it missing)."""
    text = str(path)
    if Path(text).exists() or glob.glob(text, recursive=True):
        return text
    posix = Path(text).as_posix()
    if posix.startswith(PREFIX):
        root = installed_root()
        if root is not None:
            candidate = root / posix[len(PREFIX):]
            if candidate.exists() or glob.glob(str(candidate), recursive=True):
                return str(candidate)
    return text
