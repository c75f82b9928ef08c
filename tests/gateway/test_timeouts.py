"""The ``X-Gateway-Timeout`` header and the limits of each attempt."""

from __future__ import annotations

import pytest

from gateway.context import Deployment
from gateway.errors import InvalidRequestError
from gateway.loading import load
from gateway.resilience.timeouts import client_limits, silence


def test_client_limits() -> None:
    assert client_limits({}) is None
    assert client_limits({"X-Gateway-Timeout": "2.5"}) == {"total": 2.5}
    assert client_limits({"X-Gateway-Timeout": "first_byte=1, idle = 2,total=9"}) == {
        "first_byte": 1.0,
        "idle": 2.0,
        "total": 9.0,
    }


@pytest.mark.parametrize("value", ["", "soon", "0", "-1", "inf", "nan", "connect=1", "total=1,total=2", "idle=", "=3"])
def test_malformed_limits_are_a_400(value: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        client_limits({"X-Gateway-Timeout": value})
    assert info.value.code == "invalid_header" and "X-Gateway-Timeout" in info.value.message


def test_silence_comes_from_the_model_else_the_backend_and_clients_only_lower_it() -> None:
    loaded = load(
        {
            "backends": [{"name": "mock", "type": "mock", "timeout": 7}],
            "models": [
                {"name": "plain", "backend": "mock"},
                {"name": "tight", "backend": "mock", "timeouts": {"first_byte": 2, "idle": 3}},
            ],
        }
    )
    [backend] = loaded.backends
    plain, tight = (Deployment(backend, "x", route=route) for route in loaded.config.models)
    assert silence(plain, None) == (7, 7)
    assert silence(tight, None) == (2, 3)
    assert silence(tight, {"first_byte": 0.5, "idle": 60}) == (0.5, 3)
    assert silence(Deployment(backend, "x"), {"idle": 1}) == (7, 1)
