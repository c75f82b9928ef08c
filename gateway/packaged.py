"""The config files that ship with the gateway: ``gateway.yaml`` (the default config) and
``examples/*.yaml``.

The repository's ``config/`` folder is their one source. Building the package copies it into the
package as ``gateway/data/`` (``setup.py``), so an installed copy finds them there; a checkout (an
editable install, the tests) reads ``config/`` itself.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

INSTALLED = Path(__file__).resolve().with_name("data")
CHECKOUT = Path(__file__).resolve().parent.parent / "config"


def shipped_dir() -> Path:
    """Where the shipped config files are: the package's ``data/``, else the checkout's ``config/``."""
    return INSTALLED if (INSTALLED / "gateway.yaml").is_file() else CHECKOUT


def resolve_config(path: str) -> str:
    """The config file to read for ``path``: ``path`` itself when it exists; else, when it names a
    shipped file (``config/gateway.yaml``, ``config/examples/NAME.yaml`` or ``examples/NAME.yaml``),
    that shipped file; else ``path`` (which then fails to read, naming it)."""
    if Path(path).exists():
        return path
    parts = PurePosixPath(path.replace("\\", "/")).parts
    if parts == ("config", "gateway.yaml"):
        found = shipped_dir() / "gateway.yaml"
    elif parts[:-2] in ((), ("config",)) and parts[-2:-1] == ("examples",) and parts[-1].endswith(".yaml"):
        found = shipped_dir() / "examples" / parts[-1]
    else:
        return path
    return str(found) if found.is_file() else path
