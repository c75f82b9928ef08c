"""Sourcegraph's model configuration (``GET /.api/modelconfig/supported-models.json``, Sourcegraph 5.6
and later), for the ``sourcegraph`` backend: the instance's chat models and its default ones.

The document: ``{"schemaVersion", "revision", "providers": [...], "models": [{"modelRef":
"provider::apiVersion::model", "capabilities": ["chat", ...], ...}], "defaultModels": {"chat",
"fastChat", "codeCompletion"}}``. The backend answers the model ``default`` with ``defaultModels.chat``
(when the gateway's config names no ``default_model``), and lists the chat models from it when the
instance cannot list them at ``/.api/llm/models``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PATH = "/.api/modelconfig/supported-models.json"
#: The model name that means "the instance's default chat model".
DEFAULT = "default"


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """What the backend uses of an instance's model configuration."""

    chat_models: tuple[str, ...]  # the modelRefs of the models with the chat capability, in order
    default_chat: str | None  # defaultModels.chat
    default_fast_chat: str | None  # defaultModels.fastChat


def parse(document: Any) -> ModelConfig | None:
    """The configuration a ``supported-models.json`` document holds; None for something else."""
    if not isinstance(document, dict) or not isinstance(document.get("models"), list):
        return None
    chat = tuple(
        m["modelRef"]
        for m in document["models"]
        if isinstance(m, dict) and isinstance(m.get("modelRef"), str) and "chat" in (m.get("capabilities") or ())
    )
    defaults = document.get("defaultModels")
    defaults = defaults if isinstance(defaults, dict) else {}
    return ModelConfig(chat, _ref(defaults.get("chat")), _ref(defaults.get("fastChat")))


def _ref(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
