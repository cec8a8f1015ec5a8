"""Spice's spicepod spellings, translated onto modelbus's own keys before the file is decoded.

A spicepod written for Spice loads unchanged: ``params.openai_<field>`` becomes ``params.defaults.<field>``
(validated as the request field it sets), ``tools: auto`` (or a comma-separated list, or Spice's older
``spice_tools``) becomes the list of runtime tools, and Spice's ``responses_api`` values become modelbus's.
A Spice key modelbus cannot honour is refused here by name, with what to do instead. :data:`SPICE_KEYS` is
every Spice key and what modelbus does with it; docs/configuration.md's table is rendered from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from modelbus.config.errors import ConfigError
from modelbus.config.model import RUNTIME_TOOLS
from modelbus.schemas.openai import DEFAULTABLE_FIELDS, ChatCompletionRequest

__all__ = ("SPICE_KEYS", "USAGE_TIER_CONCURRENCY", "SpiceKey", "translate")

# Spice's outbound concurrency per OpenAI usage tier (``openai_usage_tier``; Spice's default is tier1)
# (Spice's llms::openai::UsageTier, PR spiceai/spiceai#6767)
USAGE_TIER_CONCURRENCY = {"free": 1, "tier1": 35, "tier2": 60, "tier3": 60, "tier4": 125, "tier5": 125}
_ALL_TOOLS = ("auto", "all", "builtin")
_NO_TOOLS = ("", "none", "disabled")
# Spice's sampling tools are one tool here (its arguments say how many rows of which dataset)
_TOOL_ALIASES = {
    "random_sample": "sample_data",
    "sample_distinct_columns": "sample_data",
    "top_n_sample": "sample_data",
}
# Spice tools modelbus does not have, and why (named in the refusal)
_OTHER_TOOLS = {
    "memory": "modelbus keeps no memory store",
    "search": "modelbus has no vector search over datasets",
    "document_similarity": "modelbus has no vector search over datasets",
    "websearch": "modelbus does not search the web",
    "get_readiness": "ask GET /v1/models instead",
    "get_current_datetime": "the datasets' own dates are in the table_schema tool's answer",
}
# Spice's top-level sections modelbus has no equivalent of, and what to do instead
_TOP_LEVEL = {
    "dependencies": "modelbus does not fetch spicepods from spice.ai: copy their datasets and models here",
    "catalogs": "modelbus reads datasets, not catalogs: list each table under `datasets:` (`clickhouse:`)",
    "views": "modelbus has no SQL views: create the view in ClickHouse and use it as a `clickhouse:` dataset",
    "tools": "modelbus's runtime tools are set per model (`params.tools`); MCP and custom tools are not run",
}
# dataset ``acceleration`` keys: modelbus always loads a file into its ClickHouse engine, once at start
_ACCELERATION_KEYS = frozenset({"enabled", "engine", "mode"})
# ``openai_<field>`` params that are settings of their own, not request defaults
_OWN_OPENAI_PARAMS = frozenset({"openai_api_key", "openai_org_id", "openai_project_id", "openai_usage_tier"})
_RESPONSES_API = {"disabled": "adapted", "enabled": "native"}


@dataclass(frozen=True, slots=True)
class SpiceKey:
    key: str
    handling: str  # "the same", "translated", "refused"
    what: str


SPICE_KEYS: tuple[SpiceKey, ...] = (
    SpiceKey("version, name", "the same", "Accepted; `name` is for people."),
    SpiceKey("kind: Spicepod", "the same", "Loads the same schema as `kind: Modelbus`."),
    SpiceKey("models[].name, description, datasets, dependsOn", "the same", "As Spice: `datasets` is the "
             "model's allowlist for `/v1/nsql` and for its tools; `dependsOn` is ignored."),
    SpiceKey("models[].from: openai:<model>", "the same", "Any OpenAI-compatible server (see `endpoint`)."),
    SpiceKey("models[].from: other providers (anthropic:, azure:, huggingface:, file:, ...)", "refused",
             "Serve them behind an OpenAI-compatible endpoint and use `openai:` with `params.endpoint`; "
             "`local:` runs a GGUF here."),
    SpiceKey("models[].files", "refused", "Give a local model's `.gguf` as `from: local:<path>`."),
    SpiceKey("params.openai_api_key", "the same", "The upstream's bearer key (modelbus: `api_key`)."),
    SpiceKey("params.openai_org_id, openai_project_id", "the same", "Sent upstream as `OpenAI-Organization` "
             "and `OpenAI-Project`."),
    SpiceKey("params.endpoint", "the same", "The upstream's base URL."),
    SpiceKey("params.system_prompt", "the same", "A system message put first in every request."),
    SpiceKey("params.openai_<field> (openai_temperature, openai_max_completion_tokens, openai_max_tokens, "
             "openai_response_format, openai_reasoning_effort, openai_top_p, openai_seed, ...)", "translated",
             "`params.defaults.<field>`: used when a request leaves the field out; a request's own value "
             "wins. Checked as the request field it sets (`openai_temperature: 5` is refused). A JSON "
             "string is decoded (`openai_response_format: '{\"type\": \"json_object\"}'`). A field "
             "modelbus does not know is refused, naming it."),
    SpiceKey("params.openai_usage_tier: free | tier1 ... tier5", "translated",
             "The outbound concurrency (`capacity`) when `capacity` is not set: "
             + ", ".join(f"{tier} {n}" for tier, n in USAGE_TIER_CONCURRENCY.items()) + "."),
    SpiceKey("params.responses_api: enabled | disabled", "translated",
             "`enabled`: `POST /v1/responses` is passed to the upstream's own `/responses` (`native`); "
             "`disabled`: adapted onto chat completions (`adapted`), which every model serves."),
    SpiceKey("params.tools: auto | all | builtin | none | <comma list>", "the same",
             "Runtime tools over the model's datasets, run by the model worker's tool loop: "
             + ", ".join(f"`{t}`" for t in RUNTIME_TOOLS) + ". `auto`, `all` and `builtin` are all five."),
    SpiceKey("params.spice_tools", "translated", "Spice's older name of `tools`."),
    SpiceKey("params.tools: memory, search, websearch, document_similarity, get_readiness, mcp:...",
             "refused", "The refusal says why; the five tools above are what modelbus has."),
    SpiceKey("params.tool_recursion_limit", "the same", "Model turns that may call tools per request "
             "(default 10); past it the model answers without tools."),
    SpiceKey("workers[] with load_balance.routing [{from, order | weight}]", "the same",
             "A model clients call by the worker's name, listed in `/v1/models` with `owned_by: spiceai`; "
             "see `workers[]`."),
    SpiceKey("workers[] with cron, sql or params.prompt", "refused", "Scheduled workers: run a client on a "
             "schedule instead."),
    SpiceKey("embeddings[]", "the same", "`openai:` and `local:multilingual-e5-small`."),
    SpiceKey("datasets[].name, from, description, params", "the same", "`file:`, `sample:`, `history:` and "
             "`clickhouse:` load; other `from:` forms load with the file and are reported as dataset "
             "errors (`dataset.validation`)."),
    SpiceKey("${secrets:NAME}, ${ secrets:NAME }, ${env:NAME}", "the same", "Read as Spice's default `env` "
             "store does: the environment, then `.env.local` and `.env` beside the file; for `secrets:`, "
             "`SPICE_<NAME>` first. An unset one is an error naming it (Spice reads it as empty)."),
    SpiceKey("metadata", "the same", "Accepted, for people."),
    SpiceKey("secrets: [{from: env}]", "the same", "The `env` store is what modelbus reads; any other store "
             "is refused."),
    SpiceKey("dependencies, catalogs, views, tools (top level)", "refused", "Each refusal says what to do "
             "instead."),
    SpiceKey("datasets[].acceleration: {enabled, engine, mode}", "the same", "Accepted: a dataset is always "
             "loaded into modelbus's ClickHouse engine, once at start."),
    SpiceKey("datasets[].acceleration: refresh_check_interval, refresh_mode, refresh_sql, ...", "refused",
             "modelbus does not refresh a dataset; restart the NSQL worker to load a changed file."),
    SpiceKey("datasets[].columns, embeddings on columns", "refused", "Unknown key: modelbus has no vector "
             "search over datasets."),
    SpiceKey("runtime.task_history: {enabled, captured_output}", "translated",
             "`runtime.history.enabled` and `runtime.history.record` (`none`, `truncated`)."),
    SpiceKey("runtime: other Spice keys (auth.api-key, cors, results_cache, mcp, query, ...)", "refused",
             "modelbus's `runtime:` has its own keys; an unknown one is refused by name."),
)  # fmt: skip


def translate(tree: dict[str, Any], source: str) -> dict[str, Any]:
    """The raw configuration tree in modelbus's spelling: models' Spice params, datasets' ``acceleration``,
    the top-level ``secrets`` stores and ``runtime.task_history``."""
    tree = dict(tree)
    for section, instead in _TOP_LEVEL.items():
        if section in tree:
            raise ConfigError(source, section, "Spice's `" + section + "` is not supported", instead)
    tree.pop("metadata", None)  # for people (Spice's too)
    if "secrets" in tree:
        _check_secret_stores(tree.pop("secrets"), source)
    models = tree.get("models")
    if isinstance(models, list):
        tree["models"] = [
            {**m, "params": _params(m["params"], f"models[{i}].params", source)}
            if isinstance(m, dict) and isinstance(m.get("params"), dict) else m
            for i, m in enumerate(models)
        ]  # fmt: skip
    datasets = tree.get("datasets")
    if isinstance(datasets, list):
        tree["datasets"] = [_dataset(d, f"datasets[{i}]", source) for i, d in enumerate(datasets)]
    for i, worker in enumerate(tree.get("workers") or []):
        scheduled = [k for k in ("cron", "sql", "params") if isinstance(worker, dict) and k in worker]
        if scheduled:
            raise ConfigError(
                source, f"workers[{i}].{scheduled[0]}", "scheduled workers (cron, sql, a prompt) are not run "
                "by modelbus; only load_balance workers are", "run a client on a schedule instead",
            )  # fmt: skip
    runtime = tree.get("runtime")
    if isinstance(runtime, dict) and "task_history" in runtime:
        tree["runtime"] = _task_history(runtime, source)
    return tree


def _check_secret_stores(stores: Any, source: str) -> None:
    """Spice's ``secrets:`` list: only its default store, the environment, is what modelbus reads."""
    for i, store in enumerate(stores if isinstance(stores, list) else [stores]):
        kind = store.get("from") if isinstance(store, dict) else store
        if kind != "env":
            raise ConfigError(
                source, f"secrets[{i}]", f"secret store `{kind}` is not available: modelbus reads secrets "
                "from the environment (and .env files beside this one)", "remove it, and export the secrets",
            )  # fmt: skip


def _dataset(dataset: Any, key: str, source: str) -> Any:
    """A dataset without Spice's ``acceleration`` block, once it asks only for what modelbus does anyway."""
    if not isinstance(dataset, dict) or "acceleration" not in dataset:
        return dataset
    acceleration = dataset["acceleration"]
    unknown = sorted(set(acceleration) - _ACCELERATION_KEYS) if isinstance(acceleration, dict) else []
    if unknown:
        raise ConfigError(
            source, f"{key}.acceleration.{unknown[0]}", "modelbus loads a dataset into its ClickHouse engine "
            "once, when the NSQL worker starts (again at a restart if the file changed); it does not refresh "
            "it", "remove it; restart the NSQL worker to load a changed file",
        )  # fmt: skip
    return {k: v for k, v in dataset.items() if k != "acceleration"}


def _task_history(runtime: dict[str, Any], source: str) -> dict[str, Any]:
    """Spice's ``runtime.task_history`` as modelbus's ``runtime.history``."""
    spice = runtime["task_history"]
    if "history" in runtime:
        raise ConfigError(source, "runtime.task_history", "`history` is set too", "keep `history`")
    history: dict[str, Any] = {}
    for name, value in (spice if isinstance(spice, dict) else {}).items():
        if name == "enabled":
            history["enabled"] = value
        elif name == "captured_output":
            history["record"] = value
        else:
            raise ConfigError(
                source, f"runtime.task_history.{name}", "not a task history setting modelbus has",
                "see runtime.history in docs/configuration.md (keep_days sets the retention)",
            )  # fmt: skip
    return {**{k: v for k, v in runtime.items() if k != "task_history"}, "history": history}


def _params(params: dict[str, Any], key: str, source: str) -> dict[str, Any]:
    out = dict(params)
    for alias in ("spice_tools", "openai_tools"):  # Spice's older names of `tools`
        if alias in out:
            if "tools" in out:
                raise ConfigError(
                    source, f"{key}.{alias}", f"`{alias}` and `tools` are both set", "keep `tools`"
                )
            out["tools"] = out.pop(alias)
    if "openai_responses_tools" in out:
        raise ConfigError(
            source, f"{key}.openai_responses_tools", "OpenAI's hosted tools (web_search, code_interpreter) "
            "are not run by modelbus", "remove it; a client may still send them to /v1/responses",
        )  # fmt: skip
    if "tools" in out:
        out["tools"] = _tools(out["tools"], f"{key}.tools", source)
    responses = out.get("responses_api")
    if isinstance(responses, str) and responses in _RESPONSES_API:
        out["responses_api"] = _RESPONSES_API[responses]
    spice_defaults = {
        name.removeprefix("openai_"): value
        for name, value in params.items()
        if name.startswith("openai_") and name not in _OWN_OPENAI_PARAMS
    }
    if spice_defaults:
        for field in spice_defaults:
            del out[f"openai_{field}"]
        out["defaults"] = _defaults(out.get("defaults"), spice_defaults, key, source)
    return out


def _tools(value: Any, key: str, source: str) -> list[str]:
    """``auto`` (all of them), ``none``, or names given as a list or as one comma-separated string."""
    names = value.split(",") if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ConfigError(source, key, "expected `auto`, `none`, or tool names", "write `tools: auto`")
    chosen: list[str] = []
    for given in names:
        name = _TOOL_ALIASES.get(given.strip(), given.strip())
        if name in _ALL_TOOLS:
            chosen.extend(RUNTIME_TOOLS)
        elif name in RUNTIME_TOOLS:
            chosen.append(name)
        elif name not in _NO_TOOLS:
            why = _OTHER_TOOLS.get(name.partition(":")[0], "it is not one of modelbus's runtime tools")
            raise ConfigError(
                source, key, f"tool `{name}` is not available: {why}",
                f"use `auto`, or some of {', '.join(RUNTIME_TOOLS)}",
            )  # fmt: skip
    return list(dict.fromkeys(chosen))


def _defaults(given: Any, spice: dict[str, Any], key: str, source: str) -> dict[str, Any]:
    """``defaults`` with Spice's ``openai_<field>`` values added, each checked as the field it sets."""
    defaults = dict(given) if isinstance(given, dict) else {}
    for field, value in spice.items():
        spice_key = f"{key}.openai_{field}"
        if field not in DEFAULTABLE_FIELDS:
            raise ConfigError(
                source, spice_key, f"`{field}` is not an OpenAI request field modelbus knows",
                f"remove it; the fields a default may set: {', '.join(sorted(DEFAULTABLE_FIELDS))}",
            )  # fmt: skip
        if field in defaults:
            raise ConfigError(source, spice_key, f"`defaults.{field}` is set too", "keep one of the two")
        defaults[field] = _checked(field, _decoded(value), spice_key, source)
    return defaults


def _decoded(value: Any) -> Any:
    """Spice params are often strings: one holding a JSON object or array is that object."""
    if isinstance(value, str) and value.lstrip()[:1] in ("{", "["):
        try:
            return msgspec.json.decode(value)
        except msgspec.DecodeError:
            return value
    return value


def _checked(field: str, value: Any, key: str, source: str) -> Any:
    """``value`` as the request field ``field`` takes it (``"0.1"``: 0.1), or the error that says why not."""
    probe = {"model": "m", "messages": [{"role": "user", "content": ""}], field: value}
    try:
        request = msgspec.convert(probe, ChatCompletionRequest, strict=False)
    except msgspec.ValidationError as exc:
        problem = str(exc).split(" - at ", 1)[0]
        raise ConfigError(source, key, problem, f"give `{field}` a value OpenAI accepts") from exc
    return msgspec.to_builtins(getattr(request, field))
