"""gateway.upstream.errors on Anthropic's error bodies and the statuses a backend names "overloaded"."""

from __future__ import annotations

import orjson
import pytest

from gateway.errors import UpstreamError
from gateway.upstream.errors import UpstreamClientError, UpstreamOverloadedError, error_details, http_error


def anthropic_error(type_: str, message: str) -> bytes:
    return orjson.dumps({"type": "error", "error": {"type": type_, "message": message}, "request_id": "req_011"})


def test_anthropic_error_bodies_give_their_message_and_type() -> None:
    assert error_details(anthropic_error("overloaded_error", "Overloaded")) == {
        "message": "Overloaded",
        "type": "overloaded_error",
    }


def test_an_overloaded_status_is_a_503_that_keeps_retry_after() -> None:
    body = anthropic_error("overloaded_error", "Overloaded")
    error = http_error("claude", 529, body, {"Retry-After": "12"}, overloaded=(529,))
    assert isinstance(error, UpstreamOverloadedError) and isinstance(error, UpstreamError)
    assert error.status == 503
    assert error.headers == {"Retry-After": "12"}
    assert error.to_dict()["error"] == {
        "message": "Backend 'claude' is overloaded: Overloaded",
        "type": "upstream_error",
        "param": None,
        "code": "upstream_overloaded",
    }


@pytest.mark.parametrize(("status", "overloaded"), [(500, (529,)), (502, (529,)), (503, (529,)), (529, ())])
def test_other_5xx_stay_502(status: int, overloaded: tuple[int, ...]) -> None:
    body = anthropic_error("api_error", "Internal")
    error = http_error("claude", status, body, {"Retry-After": "3"}, overloaded=overloaded)
    assert type(error) is UpstreamError and error.status == 502 and error.headers == {}


def test_an_anthropic_4xx_keeps_its_status_message_and_type() -> None:
    error = http_error("claude", 404, anthropic_error("not_found_error", "no such model"))
    assert isinstance(error, UpstreamClientError)
    assert (error.status, error.message, error.type) == (404, "no such model", "not_found_error")
    forwarded = http_error("claude", 403, anthropic_error("permission_error", "no access"), own_key=False)
    assert isinstance(forwarded, UpstreamClientError) and forwarded.status == 403
    own = http_error("claude", 403, anthropic_error("permission_error", "no access"))  # the gateway's own key
    assert own.status == 502 and own.code == "upstream_auth_error" and "no access" in own.message
