"""Clients' structured-output and agent helpers against the default config (config/gateway.yaml: the
mock backend serving ``mock-gpt-model``): the ``openai`` SDK's ``chat.completions.parse`` with a
pydantic model, and a pydantic-ai agent whose function tool the mock calls under ``tool_choice: auto``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

import openai
import pytest
from pydantic import BaseModel, Field

from gateway.testing import ServerThread, make_app

DEFAULT = Path(__file__).parents[2] / "config" / "gateway.yaml"
MODEL = "mock-gpt-model"


class Ingredient(BaseModel):
    name: str
    grams: Annotated[int, Field(ge=1)]
    unit: Literal["g", "kg"]


class Recipe(BaseModel):
    title: str
    ingredients: list[Ingredient]
    vegetarian: bool
    source: Ingredient | None = None


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with ServerThread(make_app(DEFAULT)) as server:
        yield server.url


@pytest.fixture
def client(url: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=10) as client:
        yield client


def test_parse_with_a_pydantic_model(client: openai.OpenAI) -> None:
    completion = client.chat.completions.parse(
        model=MODEL, messages=[{"role": "user", "content": "A soup recipe"}], response_format=Recipe
    )
    recipe = completion.choices[0].message.parsed
    assert isinstance(recipe, Recipe)
    assert recipe.ingredients and all(i.grams >= 1 for i in recipe.ingredients)


def test_streamed_parse_with_a_pydantic_model(client: openai.OpenAI) -> None:
    with client.chat.completions.stream(
        model=MODEL, messages=[{"role": "user", "content": "A soup recipe"}], response_format=Recipe
    ) as stream:
        final = stream.get_final_completion()
    assert isinstance(final.choices[0].message.parsed, Recipe)


def test_json_object_mode(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hello"}], response_format={"type": "json_object"}
    )
    assert completion.choices[0].message.content == '{"text": "hello"}'


@pytest.fixture
async def chat_model(url: str) -> AsyncIterator[Any]:
    """A pydantic-ai model on the gateway (its OpenAI client closed after the test)."""
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=10) as oai:
        yield OpenAIChatModel(MODEL, provider=OpenAIProvider(openai_client=oai))


async def test_pydantic_ai_agent_calls_its_tool_and_completes(chat_model: Any) -> None:
    from pydantic_ai import Agent

    agent = Agent(chat_model)
    calls: list[str] = []

    @agent.tool_plain
    def roll_dice(sides: int) -> str:
        """Roll a die with this many sides."""
        calls.append(f"d{sides}")
        return "rolled a 4"

    result = await agent.run("Please roll_dice for me")
    assert calls == ["d0"]  # the mock's arguments come from the tool's schema
    assert result.output == "rolled a 4"  # the mock answers with the tool's result
    requests = [m for m in result.all_messages() if m.kind == "request"]
    assert len(requests) == 2  # the prompt, then the tool's return


async def test_pydantic_ai_agent_with_structured_output(chat_model: Any) -> None:
    from pydantic_ai import Agent

    agent = Agent(chat_model, output_type=Recipe)
    seen: list[str] = []

    @agent.tool_plain
    def pantry() -> str:
        """What is in the pantry."""
        seen.append("pantry")
        return "leeks"

    result = await agent.run("Check the pantry, then give a recipe")
    assert seen == ["pantry"]
    assert isinstance(result.output, Recipe)
