"""Pre- and post-processing by rules (``plugins.transforms``): per model and per key, refuse by
policy, redact, set a system prompt, parameter defaults and caps, model aliases, and filter replies,
streamed or not. Inactive while the section has no rules.

Each rule that matches a request applies in order, and within a rule in this order: refusal
(``ContentPolicyError``, 400 ``content_policy``), redaction of the request's text, the system prompt,
defaults, caps, then the alias (``ctx.body["model"]`` changes, so routing sees the upstream name;
``ctx.model`` keeps the client's, which responses show). Response filters apply to non-streamed
replies here and to streams through a stateful ``ChunkFilter`` (see ``patterns``).

Every hook is ``tryfirst``: other plugins see a request only as the rules left it (refused,
redacted, aliased) and a reply only once the response filters have seen it.
"""

from __future__ import annotations

from typing import Any

from gateway import ChunkFilter, hookimpl, model_object
from gateway.config import GatewayConfig
from gateway.context import RequestContext
from gateway.endpoints import MODELS_LIST, MODELS_RETRIEVE
from gateway.keys import backends_key
from gateway_plugins.transforms.config import Rule, TransformsConfig
from gateway_plugins.transforms.patterns import CONTENT_FILTER, Patterns, ResponseFilter, TextChain, text_slot
from gateway_plugins.transforms.requests import apply_rule

SECTION = "transforms"
FILTERS = "transforms.filters"  # ctx.state: the response filters of the rules that matched


@hookimpl
def gateway_register_config(register):  # type: ignore[no-untyped-def]
    """Declare the ``transforms`` section."""
    register(SECTION, TransformsConfig)


@hookimpl
def gateway_idle(config: GatewayConfig) -> bool:
    """Idle without rules."""
    return not config.plugin_config(SECTION).rules


def _rules(ctx: RequestContext) -> list[Rule]:
    return ctx.config.plugin_config(SECTION).rules


@hookimpl(tryfirst=True)
def gateway_process_request(ctx: RequestContext) -> None:
    """Apply every matching rule to a model request; resolve an alias asked for by ``/v1/models/{id}``."""
    rules = _rules(ctx)
    if not rules:
        return
    body = ctx.body
    if body is None:
        if ctx.endpoint == MODELS_RETRIEVE and ctx.model:
            _retrieve_alias(ctx, rules, ctx.model)
        return
    filters: list[Patterns] = []
    for rule in rules:
        if rule.for_caller(ctx.principal) and rule.for_model(ctx.model, body.get("model")):
            apply_rule(rule, ctx)
            if rule.filters is not None:
                filters.append(rule.filters)
    if filters:
        ctx.state[FILTERS] = filters
        ctx.translate = True  # the filters read chat replies: no native pass-through (/v1/messages)


@hookimpl(tryfirst=True)
def gateway_stream_filter(ctx: RequestContext) -> ChunkFilter | None:
    """A response filter for a stream that matching rules filter; None (pass-through) otherwise."""
    filters = ctx.state.get(FILTERS)
    return ResponseFilter(filters) if filters else None


@hookimpl(tryfirst=True)
def gateway_process_response(ctx: RequestContext, response: dict[str, Any]) -> None:
    """Filter a non-streamed reply; show aliases on ``/v1/models`` and ``/v1/models/{alias}``."""
    filters = ctx.state.get(FILTERS)
    if filters:
        for choice in response.get("choices") or ():
            holder, field = text_slot(choice)
            text = holder.get(field)
            if isinstance(text, str) and text:
                state = TextChain(filters)
                holder[field] = state.feed(text, final=True)
                if state.blocked:
                    choice["finish_reason"] = CONTENT_FILTER
    elif ctx.endpoint == MODELS_LIST and _rules(ctx):
        _list_aliases(ctx, response)


def _caller_aliases(rules: list[Rule], ctx: RequestContext) -> dict[str, str]:
    """The aliases this caller may use (the first rule that defines one wins)."""
    found: dict[str, str] = {}
    for rule in rules:
        if rule.aliases and rule.for_caller(ctx.principal):
            for alias, target in rule.aliases.items():
                if alias not in found and rule.for_model(alias):
                    found[alias] = target
    return found


def _retrieve_alias(ctx: RequestContext, rules: list[Rule], model: str) -> None:
    """Answer ``/v1/models/{alias}`` as the model the alias stands for would be answered."""
    target = _caller_aliases(rules, ctx).get(model)
    route = ctx.config.find_route(target) if target is not None else None
    if route is not None:
        ctx.response = model_object(model, ctx.request.app[backends_key][route.backend].owned_by)


def _list_aliases(ctx: RequestContext, response: dict[str, Any]) -> None:
    """Add each alias whose target the list shows, as that model under the alias's name."""
    models = response.get("data")
    if not isinstance(models, list):
        return
    listed = {m.get("id"): m for m in models}
    for alias, target in _caller_aliases(_rules(ctx), ctx).items():
        if alias not in listed and target in listed:
            models.append({**listed[target], "id": alias})
