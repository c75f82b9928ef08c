"""Lets the tests import the plugin when it is not installed (as when they run from the gateway's
repository); installed (``pip install -e .``), it is importable anyway."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

if importlib.util.find_spec("gateway_example_plugin") is None:
    sys.path.insert(0, str(Path(__file__).parent))
