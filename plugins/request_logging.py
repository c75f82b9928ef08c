"""The access log: one structured line per request, after its last byte."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from gateway import hookimpl
from gateway.context import RequestContext


class RequestLoggingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    skip_paths: list[str] = Field(default_factory=list, description="paths logged only when they fail, e.g. /health")


@hookimpl
def gateway_register_config(register):  # type: ignore[no-untyped-def]
    """Declare the ``request_logging`` section."""
    register("request_logging", RequestLoggingConfig)


@hookimpl
def gateway_request_finished(ctx: RequestContext, error: BaseException | None) -> None:
    """Write the access line: id, method, path, status, model, backend, stream, timings, tokens."""
    request = ctx.request
    status = ctx.status
    if status < 400 and request.path in ctx.config.plugin_config("request_logging").skip_paths:
        return
    fields = {
        "method": request.method,
        "path": request.path,
        "status": status,
        "duration_ms": round(ctx.duration * 1000, 2),
    }
    if ctx.model is not None:
        fields["model"] = ctx.model
    if ctx.deployment is not None:
        fields["backend"] = ctx.deployment.backend.name
    if ctx.endpoint == "chat.completions":
        fields["stream"] = ctx.stream
    if ctx.first_byte is not None:
        fields["ttfb_ms"] = round((ctx.first_byte - ctx.started) * 1000, 2)
    if ctx.usage:
        fields["prompt_tokens"] = ctx.usage.get("prompt_tokens")
        fields["completion_tokens"] = ctx.usage.get("completion_tokens")
    if ctx.principal is not None:
        fields["principal"] = ctx.principal.name
    if error is not None:
        fields["error"] = f"{type(error).__name__}: {error}"
    (ctx.log.error if status >= 500 else ctx.log.info)("request", **fields)
