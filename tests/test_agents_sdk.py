"""The OpenAI Agents SDK (``openai-agents``) runs an agent with one function tool against the local model,
through ``POST /v1/responses``, end to end: the tool is called, its result goes back, the agent answers."""

from __future__ import annotations

import pytest
from agents import Agent, ModelSettings, Runner, function_tool, set_tracing_disabled
from agents.models.openai_responses import OpenAIResponsesModel

from modelbus.config import parse_config
from modelbus.runtime.embedded_nats import EmbeddedNats
from tests.support.stack import FAST_RUNTIME, running_stack

pytestmark = pytest.mark.slow
MODEL = "qwen2.5-coder"
LOCAL = FAST_RUNTIME + f"models:\n  - name: {MODEL}\n    from: local:qwen2.5-coder-0.5b-instruct\n"


async def test_an_agent_with_a_function_tool_runs_on_the_local_model(nats_server: EmbeddedNats) -> None:
    set_tracing_disabled(True)  # the SDK would export traces to OpenAI, which these machines cannot reach
    asked: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """The current weather in a city."""
        asked.append(city)
        return f"It is sunny and 21 C in {city}."

    async with running_stack(nats_server.url, parse_config(LOCAL, {})) as stack:
        await stack.wait_ready(MODEL, timeout=120)
        agent = Agent(
            name="weather",
            instructions="You answer questions about the weather. Use the get_weather tool.",
            tools=[get_weather],
            model=OpenAIResponsesModel(model=MODEL, openai_client=stack.client()),
            # the 0.5B model calls a tool reliably only when it must; the SDK then resets the choice to auto
            model_settings=ModelSettings(tool_choice="required", temperature=0, max_tokens=80),
        )
        result = await Runner.run(agent, "What is the weather in Paris?", max_turns=4)
    assert asked and "paris" in asked[0].lower()
    assert isinstance(result.final_output, str) and result.final_output.strip()
