"""Spicepods as Spice users write them: Spice's params, secrets, workers, and the quickstarts' own files.

The files in tests/fixtures/spicepods are copies of Spice's (each names its source); they are loaded as they
are. The quickstart of issue 16 is also served end to end, its model played by the stand-in upstream
(``OPENAI_BASE_URL``, as OpenAI's SDKs read it) and its dataset loaded from its CSV into the real ClickHouse.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from modelbus.cli.reference import render_spice_keys
from modelbus.config import Config, ConfigError, load_config, parse_config
from modelbus.config.spicepod import SPICE_KEYS, USAGE_TIER_CONCURRENCY
from modelbus.runtime.clickhouse.engine import ClickHouse
from modelbus.runtime.embedded_nats import EmbeddedNats
from modelbus.workers.model.providers.factory import capacity_of
from tests.support.nsql_fixtures import nsql_engine
from tests.support.stack import FAST_RUNTIME, nsql_stack
from tests.support.upstream import Behaviour, UpstreamServer

__all__ = ("nsql_engine",)

ROOT = Path(__file__).resolve().parents[1]
PODS = Path(__file__).parent / "fixtures" / "spicepods"
SECRETS = {"OPENAI_API_KEY": "sk-test", "SPICE_OPENAI_API_KEY": "sk-spice", "GITHUB_TOKEN": "gh"}
LOADS = ["issue16_quickstart.yaml", "cookbook_text_to_sql.yaml", "cookbook_ai.yaml", "skills_local_csv.yaml"]
REFUSED = {
    "cookbook_localpod.yaml": "datasets[0].acceleration.refresh_check_interval",
    "cookbook_openai_responses_api.yaml": "models[0].params.openai_responses_tools",
    "cookbook_openai_sdk.yaml": "dependencies",
}


def _model(params: str, *, extra: str = "", environ: dict[str, str] | None = None) -> Config:
    return parse_config(
        "kind: Spicepod\nmodels:\n  - name: m\n    from: openai:gpt-4o-mini\n    datasets: [d]\n"
        f"    params: {{{params}}}\n" + extra + "datasets:\n  - name: d\n    from: sample:sales_data\n",
        environ or {},
    )


def _refusal(params: str = "", *, text: str | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as refused:
        _model(params) if text is None else parse_config(text, {})
    return refused.value


@pytest.mark.parametrize("name", LOADS)
def test_the_quickstart_spicepods_that_use_supported_parts_load_unchanged(name: str) -> None:
    config = load_config(PODS / name, SECRETS)
    assert config.kind == "Spicepod"
    for model in config.models:
        assert model.params.openai_api_key in {"sk-test", "sk-spice"}


@pytest.mark.parametrize(("name", "key"), REFUSED.items())
def test_spicepods_asking_for_what_modelbus_cannot_honour_are_refused_by_key(name: str, key: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_config(PODS / name, SECRETS)
    assert refused.value.key == key and refused.value.fix


def test_spice_params_map_onto_modelbus_settings() -> None:
    config = _model(
        "openai_temperature: 0.1, openai_max_completion_tokens: '256', openai_max_tokens: 300, "
        'openai_reasoning_effort: low, openai_response_format: \'{"type": "json_object"}\', '
        "openai_top_p: 0.5, openai_seed: 7, openai_usage_tier: tier2, system_prompt: Be brief., "
        "tool_recursion_limit: 3, tools: auto, responses_api: enabled, openai_org_id: org-1"
    )
    params = config.models[0].params
    assert params.defaults == {
        "temperature": 0.1, "max_completion_tokens": 256, "max_tokens": 300, "reasoning_effort": "low",
        "response_format": {"type": "json_object"}, "top_p": 0.5, "seed": 7,
    }  # fmt: skip
    assert capacity_of(config.models[0]) == USAGE_TIER_CONCURRENCY["tier2"] == 60
    assert (params.system_prompt, params.tool_recursion_limit) == ("Be brief.", 3)
    assert params.tools == ("list_datasets", "table_schema", "sample_data", "sql", "nsql")
    assert (params.responses_api, params.openai_org_id) == ("native", "org-1")
    assert _model("responses_api: disabled").models[0].params.responses_api == "adapted"
    assert capacity_of(_model("openai_usage_tier: free, capacity: 5").models[0]) == 5  # capacity wins


@pytest.mark.parametrize(
    ("tools", "chosen"),
    [
        ("'sql, list_datasets'", ("sql", "list_datasets")),
        ("[sql, random_sample]", ("sql", "sample_data")),
        ("none", ()),
        ("disabled", ()),
    ],
)
def test_tools_take_spices_forms(tools: str, chosen: tuple[str, ...]) -> None:
    assert _model(f"tools: {tools}").models[0].params.tools == chosen
    assert _model(f"spice_tools: {tools}").models[0].params.tools == chosen


def test_what_cannot_be_honoured_is_an_error_naming_the_key_and_what_to_do() -> None:
    hot = _refusal("openai_temperature: 5")
    assert hot.key == "models[0].params.openai_temperature" and "<= 2" in hot.problem
    unknown = _refusal("openai_frobnicate: 1")
    assert unknown.key == "models[0].params.openai_frobnicate" and "temperature" in unknown.fix
    memory = _refusal("tools: 'sql, memory'")
    assert memory.key == "models[0].params.tools" and "memory" in memory.problem
    both = _refusal("openai_temperature: 0.1, defaults: {temperature: 0.2}")
    assert "defaults.temperature" in both.problem
    assert _refusal("spice_tools: auto, tools: auto").key == "models[0].params.spice_tools"
    assert _refusal("openai_usage_tier: tier9").key == "models[0].params.openai_usage_tier"
    no_data = _refusal(text="models:\n  - {name: m, from: 'openai:x', params: {tools: auto}}\n")
    assert no_data.key == "models[0].params.tools"
    store = _refusal(text="secrets:\n  - {from: aws_secrets_manager, name: aws}\n")
    assert store.key == "secrets[0]"


def test_secrets_resolve_as_spices_env_store_does(tmp_path: Path) -> None:
    text = "models:\n  - {name: m, from: 'openai:x', params: {openai_api_key: '${ secrets:my_key }'}}\n"
    key = lambda environ: parse_config(text, environ).models[0].params.openai_api_key  # noqa: E731
    assert key({"my_key": "plain"}) == "plain"
    assert key({"my_key": "plain", "SPICE_MY_KEY": "prefixed"}) == "prefixed"
    assert key({"MY_KEY": "upper"}) == "upper"
    with pytest.raises(ConfigError, match="my_key is not set"):
        key({})
    pod = tmp_path / "spicepod.yaml"
    pod.write_text(text)
    (tmp_path / ".env").write_text("# a comment\nMY_KEY=from-dotenv\nOTHER='x'\n")
    assert load_config(pod, {}).models[0].params.openai_api_key == "from-dotenv"
    (tmp_path / ".env.local").write_text('export MY_KEY="from-local"\n')
    assert load_config(pod, {}).models[0].params.openai_api_key == "from-local"
    assert load_config(pod, {"MY_KEY": "from-env"}).models[0].params.openai_api_key == "from-env"


def test_workers_are_checked_when_the_file_loads() -> None:
    models = "models:\n  - {name: a, from: 'openai:x'}\n  - {name: b, from: 'openai:y'}\n"

    def worker(routing: str, name: str = "w") -> str:
        return models + f"workers:\n  - name: {name}\n    load_balance: {{routing: {routing}}}\n"

    config = parse_config(worker("[{from: a, order: 2}, {from: b, order: 1}]"), {})
    assert config.workers[0].members == ("a", "b")
    assert _refusal(text=worker("[{from: a}, {from: c}]")).key == "workers[0].load_balance.routing[1].from"
    assert "both" in _refusal(text=worker("[{from: a, order: 1}, {from: b, weight: 1}]")).problem
    assert "some members" in _refusal(text=worker("[{from: a, order: 1}, {from: b}]")).problem
    assert _refusal(text=worker("[{from: a}, {from: a}]")).key == "workers[0].load_balance.routing"
    assert "twice" in _refusal(text=worker("[{from: a}]", name="b")).problem
    assert _refusal(text=worker("[]")).key.startswith("workers[0].load_balance.routing")
    scheduled = models + "workers:\n  - {name: w, cron: '0 * * * *', params: {prompt: hi}}\n"
    assert _refusal(text=scheduled).key == "workers[0].cron"


def test_configuration_md_has_the_table_of_every_spice_key() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    assert render_spice_keys() in text, (
        "docs/configuration.md's Spice key table is stale: .venv/bin/python -m modelbus.cli.reference "
        "spice-keys, and paste it under 'Every Spice key'"
    )
    assert len(SPICE_KEYS) >= 20


async def test_the_issue_quickstart_serves_unchanged_with_its_tools_over_its_csv(
    nats_server: EmbeddedNats, nsql_engine: ClickHouse
) -> None:
    async with UpstreamServer() as upstream:
        loaded = load_config(PODS / "issue16_quickstart.yaml", {**SECRETS, "OPENAI_BASE_URL": upstream.url})
        # the test's fast heartbeats, and a database of its own in the shared engine
        fast = parse_config(FAST_RUNTIME + "  clickhouse: {database: spicepod_quickstart}\n", {})
        config = msgspec.structs.replace(loaded, runtime=fast.runtime)
        question = (
            "SELECT region, sum(total) AS sales FROM sales_data GROUP BY region ORDER BY sales DESC LIMIT 1"
        )
        upstream.upstream.behaviour = Behaviour(
            tool_name="sql", tool_arguments=json.dumps({"query": question}), echo_tool_result=True
        )
        async with nsql_stack(nats_server.url, config, nsql_engine, PODS) as stack:
            done = await stack.client().chat.completions.create(
                model="openai_model", messages=[{"role": "user", "content": "Which region sells most?"}]
            )
            answer: dict[str, Any] = json.loads(done.choices[0].message.content or "")
            assert answer["rows"] == [_top_region(PODS / "data" / "sales_data.csv")]
            first = upstream.upstream.requests[-2].body
            system = first["messages"][0]  # the pod's system prompt, then what the datasets are
            assert system["role"] == "system"
            assert system["content"].startswith(config.models[0].params.system_prompt or "")
            assert "- sales_data: One row per order" in system["content"]
            assert first["temperature"] == 0.1 and first["model"] == "gpt-4o-mini"


def _top_region(path: Path) -> dict[str, Any]:
    totals: dict[str, float] = {}
    for line in path.read_text().splitlines()[1:]:
        fields = line.split(",")
        totals[fields[2]] = totals.get(fields[2], 0.0) + float(fields[5])
    region = max(totals, key=lambda r: totals[r])
    return {"region": region, "sales": totals[region]}
