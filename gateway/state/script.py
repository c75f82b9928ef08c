"""A ``Script``: one atomic step over a few keys, in Lua for Redis and in Python for the memory store;
``StoreUnavailable``: the store could not answer."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.errors import ServiceUnavailableError


class StoreUnavailable(ServiceUnavailableError):
    """The state store did not answer (unreachable, slower than ``timeout_ms``, or its breaker open).
    Raised as is under ``on_error: deny``: a 503 OpenAI error."""

    code = "state_store_unavailable"

    def __init__(self, message: str = "the gateway's state store is unavailable; try again shortly") -> None:
        super().__init__(message)


#: ``local(data, keys, args, now)``: the Python twin of a script, run by the memory store with its
#: dict of values (``data``, never awaited in between: atomic), the full keys and the time in seconds.
Local = Callable[[dict[str, Any], list[str], list[Any], float], Any]


@dataclass(frozen=True)
class Script:
    """A named, versioned atomic step. ``name`` carries the version (``rate_limit.v1``): a change to
    the Lua or to the layout of its keys gets a new name, and callers put it in their keys, so that
    during a rolling deploy old and new code never share keys. Lua reads Redis's clock (``TIME``);
    the twin gets ``now`` from the memory store's clock."""

    name: str
    lua: str
    local: Local
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.lua.encode()).hexdigest())
