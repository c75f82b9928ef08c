"""The order the middleware built-ins run in, around a plugin of the user's (registered after them, as
entry points and YAML modules are), as docs/plugins.md states it."""

from __future__ import annotations

from typing import Any

import pytest

from gateway import hookimpl
from gateway.plugin_manager import build_plugin_manager

MIDDLEWARE = {"auth_api_keys", "transforms", "rate_limit", "request_logging", "metrics", "yours"}


class Yours:
    __name__ = "yours"  # the name pluggy registers it under

    @hookimpl
    def gateway_authenticate(self, ctx: Any) -> None: ...

    @hookimpl
    def gateway_process_request(self, ctx: Any) -> None: ...

    @hookimpl
    def gateway_stream_filter(self, ctx: Any) -> None: ...

    @hookimpl
    def gateway_process_response(self, ctx: Any, response: Any) -> None: ...

    @hookimpl
    def gateway_request_finished(self, ctx: Any) -> None: ...


@pytest.mark.parametrize(
    ("hook", "order"),
    [
        ("gateway_authenticate", ["yours", "auth_api_keys"]),
        ("gateway_process_request", ["transforms", "yours", "rate_limit"]),
        ("gateway_stream_filter", ["transforms", "yours", "request_logging"]),
        ("gateway_process_response", ["transforms", "yours", "request_logging", "auth_api_keys"]),
        ("gateway_request_finished", ["rate_limit", "yours", "metrics", "request_logging"]),
    ],
)
def test_the_built_ins_run_in_the_documented_order(hook: str, order: list[str]) -> None:
    pm = build_plugin_manager(extra=[Yours()])
    called = [impl.plugin_name for impl in reversed(getattr(pm.hook, hook).get_hookimpls())]  # pluggy's call order
    assert [name for name in called if name in MIDDLEWARE] == order
