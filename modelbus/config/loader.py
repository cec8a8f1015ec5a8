"""Read ``modelbus.yaml`` (or a ``spicepod.yaml``) into a :class:`Config`, failing with file, key and fix."""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import msgspec
import yaml

from modelbus.config.errors import ConfigError
from modelbus.config.model import Config, ModelConfig
from modelbus.config.spicepod import translate

__all__ = ("ConfigError", "load_config", "parse_config")

PROVIDERS = ("local", "openai")
_SECRET = re.compile(r"\$\{\s*(env|secrets):([A-Za-z_][A-Za-z0-9_]*)\s*\}")
_UNKNOWN_FIELD = re.compile(r"unknown field `([^`]+)`")
_PATH = re.compile(r" - at `\$(.*)`$")


def load_config(path: str | Path, environ: Mapping[str, str]) -> Config:
    """The file at ``path``; ``${env:}`` and ``${secrets:}`` read ``environ``, then ``.env.local`` and
    ``.env`` beside the file (as Spice's env secret store does; the environment wins)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), "", f"cannot read the file ({exc.strerror})", "check the path") from exc
    files = {**_dotenv(path.parent / ".env"), **_dotenv(path.parent / ".env.local")}
    return parse_config(text, {**files, **environ} if files else environ, source=str(path))


def _dotenv(path: Path) -> dict[str, str]:
    """``NAME=value`` lines of a .env file (``export``, quotes and ``#`` comments allowed); none if absent."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return {}
    found: dict[str, str] = {}
    for line in lines:
        name, sep, value = line.strip().removeprefix("export ").partition("=")
        if sep and name.strip() and not name.lstrip().startswith("#"):
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                value = value[1:-1]
            found[name.strip()] = value
    return found


def parse_config(text: str, environ: Mapping[str, str], *, source: str = "<config>") -> Config:
    try:
        tree = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(source, where, "not valid YAML", "correct the YAML syntax there") from exc
    if tree is None:
        tree = {}
    if not isinstance(tree, dict):
        raise ConfigError(source, "", "the file must hold a mapping", "start with `models:` or `runtime:`")
    tree = _openai_base_url(translate(_substitute(tree, environ, source, ""), source), environ)
    try:
        config = msgspec.convert(tree, Config, strict=False)
    except msgspec.ValidationError as exc:
        raise _explain(source, str(exc)) from exc
    _check(config, source)
    return _resolved(config)


def _openai_base_url(tree: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """``openai:`` models and embeddings without an ``endpoint`` use ``$OPENAI_BASE_URL`` when it is set,
    as OpenAI's own SDKs do (else OpenAI's API)."""
    base_url = environ.get("OPENAI_BASE_URL")
    if not base_url:
        return tree
    tree = dict(tree)
    for section in ("models", "embeddings"):
        entries = tree.get(section)
        if not isinstance(entries, list):
            continue
        tree[section] = [
            {**e, "params": {"endpoint": base_url, **(e.get("params") or {})}}
            if isinstance(e, dict) and str(e.get("from", "")).startswith("openai:")
            and isinstance(e.get("params") or {}, dict) else e
            for e in entries
        ]  # fmt: skip
    return tree


def _resolved(config: Config) -> Config:
    """Settings whose default depends on the rest of the file, made explicit."""
    runtime = config.runtime
    if runtime.history.enabled is None:
        queryable = not runtime.clickhouse.embedded or bool(config.datasets)
        history = msgspec.structs.replace(runtime.history, enabled=queryable)
        config = msgspec.structs.replace(config, runtime=msgspec.structs.replace(runtime, history=history))
    return config


def _substitute(node: Any, environ: Mapping[str, str], source: str, key: str) -> Any:
    if isinstance(node, dict):
        return {k: _substitute(v, environ, source, f"{key}.{k}" if key else str(k)) for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute(v, environ, source, f"{key}[{i}]") for i, v in enumerate(node)]
    if isinstance(node, str):

        def value_of(match: re.Match[str]) -> str:
            store, name = match.groups()
            # Spice's env secret store: SPICE_<NAME> first, then <NAME> (upper-cased)
            tried = (f"SPICE_{name.upper()}", name, name.upper()) if store == "secrets" else (name,)
            for candidate in tried:
                if candidate in environ:
                    return environ[candidate]
            raise ConfigError(source, key, f"environment variable {name} is not set", f"export {name}")

        return _SECRET.sub(value_of, node)
    return node


def _explain(source: str, message: str) -> ConfigError:
    where = _PATH.search(message)
    key = where.group(1).lstrip(".") if where else ""
    problem = _PATH.sub("", message)
    unknown = _UNKNOWN_FIELD.search(message)
    if unknown:
        valid = _fields_at(key)
        close = difflib.get_close_matches(unknown.group(1), valid, n=1)
        fix = f"did you mean `{close[0]}`?" if close else f"valid keys here: {', '.join(valid)}"
        key = f"{key}.{unknown.group(1)}" if key else unknown.group(1)
        return ConfigError(source, key, "unknown key", fix)
    return ConfigError(source, key, problem, "give a value of the expected type (see docs/configuration.md)")


def _fields_at(key: str) -> list[str]:
    """The valid field names of the Struct found at a msgspec error path such as ``models[0].params``."""
    tp: Any = Config
    for part in re.findall(r"[^.\[\]]+", key):
        if part.isdigit():
            continue
        hints = {f.encode_name: f.type for f in msgspec.structs.fields(tp)}
        inner = hints.get(part)
        args = getattr(inner, "__args__", ())
        tp = next((a for a in (inner, *args) if isinstance(a, type) and issubclass(a, msgspec.Struct)), None)
        if tp is None:
            return []
    return sorted(f.encode_name for f in msgspec.structs.fields(tp))


# llama-server flags modelbus sets itself, from the model's params: passing them again would contradict those
MANAGED_LLAMA_FLAGS: Mapping[str, str] = MappingProxyType(
    {
        "-m": "from", "--model": "from", "--host": "", "--port": "",
        "-np": "parallel", "--parallel": "parallel", "-c": "n_ctx", "--ctx-size": "n_ctx",
        "-t": "n_threads", "--threads": "n_threads", "-a": "",
        "--alias": "", "--jinja": "", "--no-jinja": "", "--api-key": "", "--api-key-file": "",
    }
)  # fmt: skip


def _check_local(model: ModelConfig, key: str, source: str) -> None:
    params = model.params
    if params.capacity is not None and params.capacity != params.parallel:
        raise ConfigError(
            source, f"{key}.params.capacity",
            f"a local model serves `parallel` ({params.parallel}) requests at once, not {params.capacity}",
            f"remove `capacity`, or set `parallel: {params.capacity}` (llama-server's slots)",
        )  # fmt: skip
    for flag in params.llama_server_args:
        name = flag.partition("=")[0]
        if name in MANAGED_LLAMA_FLAGS:
            param = MANAGED_LLAMA_FLAGS[name]
            fix = f"set params.{param} instead" if param else "remove it: modelbus sets it"
            raise ConfigError(
                source, f"{key}.params.llama_server_args", f"`{name}` is set by modelbus itself", fix
            )


def _check_models(config: Config, source: str) -> None:
    names = [m.name for m in config.models]
    for i, model in enumerate(config.models):
        key = f"models[{i}]"
        if not model.name.strip():
            raise ConfigError(
                source, f"{key}.name", "a model needs a name", "set `name:` to the id clients use"
            )
        if names.count(model.name) > 1:
            raise ConfigError(source, f"{key}.name", f"model `{model.name}` is defined twice", "rename one")
        if model.provider not in PROVIDERS or not model.provider_model:
            raise ConfigError(
                source,
                f"{key}.from",
                f"`{model.from_}` is not a supported model source",
                f"use `<provider>:<model>` with provider one of {', '.join(PROVIDERS)}",
            )
        if model.provider == "local":
            _check_local(model, key, source)
        if model.params.responses_api == "native" and model.provider != "openai":
            raise ConfigError(
                source, f"{key}.params.responses_api", "only an `openai:` model's upstream can serve the "
                "Responses API natively", "remove it: other models get /v1/responses adapted onto chat",
            )  # fmt: skip
        dataset_names = {d.name for d in config.datasets}
        for dataset in model.datasets:
            if dataset not in dataset_names:
                raise ConfigError(
                    source,
                    f"{key}.datasets",
                    f"dataset `{dataset}` is not defined",
                    "add it under `datasets:`",
                )


EMBEDDING_PROVIDERS = ("local", "openai")


def _check_name(name: str, taken: list[str], key: str, what: str, source: str) -> None:
    """A name clients call: not empty, and not taken (models, embeddings and workers share one namespace,
    since /v1/models lists them all); added to ``taken``."""
    if not name.strip():
        raise ConfigError(source, key, f"{what} needs a name", "set `name:`")
    if name in taken:
        raise ConfigError(
            source, key, f"`{name}` is defined twice (models, embeddings and workers share one namespace: "
            "/v1/models lists them all)", "rename one",
        )  # fmt: skip
    taken.append(name)


def _check_embeddings(config: Config, source: str) -> None:
    """Embedding models: named once among every model, from a provider that embeds, datasets defined."""
    taken = [m.name for m in config.models]
    dataset_names = {d.name for d in config.datasets}
    for i, model in enumerate(config.embeddings):
        key = f"embeddings[{i}]"
        _check_name(model.name, taken, f"{key}.name", "an embedding model", source)
        if model.provider not in EMBEDDING_PROVIDERS or not model.provider_model:
            raise ConfigError(
                source, f"{key}.from", f"`{model.from_}` is not a supported embedding model source",
                f"use `<provider>:<model>` with provider one of {', '.join(EMBEDDING_PROVIDERS)}",
            )  # fmt: skip
        for dataset in model.datasets:
            if dataset not in dataset_names:
                raise ConfigError(
                    source, f"{key}.datasets", f"dataset `{dataset}` is not defined",
                    "add it under `datasets:`",
                )  # fmt: skip


def _check_workers(config: Config, source: str) -> None:
    """Load-balancing workers: named once among every model, members that are chat models, one policy."""
    taken = [m.name for m in config.models] + [e.name for e in config.embeddings]
    chat_models = {m.name for m in config.models}
    for i, worker in enumerate(config.workers):
        key = f"workers[{i}]"
        _check_name(worker.name, taken, f"{key}.name", "a worker", source)
        routing = worker.load_balance.routing
        for j, route in enumerate(routing):
            if route.from_ not in chat_models:
                raise ConfigError(
                    source, f"{key}.load_balance.routing[{j}].from", f"`{route.from_}` is not a model in "
                    "`models:`", f"use one of {sorted(chat_models)}",
                )  # fmt: skip
        members = worker.members
        if len(set(members)) != len(members):
            raise ConfigError(
                source, f"{key}.load_balance.routing", "a model is listed twice", "list each member once"
            )
        ordered = [r.order is not None for r in routing]
        weighted = [r.weight is not None for r in routing]
        if any(ordered) and any(weighted):
            raise ConfigError(
                source, f"{key}.load_balance.routing", "`order` and `weight` are both used",
                "use `order` for fallback in that order, or `weight` for a weighted spread",
            )  # fmt: skip
        for given, name in ((ordered, "order"), (weighted, "weight")):
            if any(given) and not all(given):
                raise ConfigError(
                    source, f"{key}.load_balance.routing", f"some members have `{name}` and some do not",
                    f"give every member a `{name}`",
                )  # fmt: skip


def _check_tools(config: Config, source: str) -> None:
    """A model with runtime tools needs datasets for them to read."""
    for i, model in enumerate(config.models):
        if model.params.tools and not (model.datasets or config.datasets):
            raise ConfigError(
                source, f"models[{i}].params.tools", "the tools read datasets and there are none",
                "add `datasets:` (and list them in the model's `datasets`), or remove `tools`",
            )  # fmt: skip


def _check(config: Config, source: str) -> None:
    _check_models(config, source)
    _check_embeddings(config, source)
    _check_workers(config, source)
    _check_tools(config, source)
    names = [m.name for m in config.models]
    nats = config.runtime.nats
    given = [k for k in ("token", "creds_file") if getattr(nats, k)] + (["user"] if nats.user else [])
    if len(given) > 1:
        raise ConfigError(
            source, "runtime.nats", f"{' and '.join(given)} are both set", "use one way to log in"
        )
    if nats.user and not nats.password:
        raise ConfigError(source, "runtime.nats.password", "a user needs a password", "set `password:`")
    nsql_model = config.runtime.nsql.model
    if nsql_model is not None and config.model(nsql_model) is None:
        raise ConfigError(
            source, "runtime.nsql.model", f"model `{nsql_model}` is not defined", f"use one of {names}"
        )
    clickhouse = config.runtime.clickhouse.url
    if clickhouse != "embedded" and not clickhouse.startswith(("http://", "https://")):
        raise ConfigError(
            source, "runtime.clickhouse.url", f"`{clickhouse}` is not a ClickHouse URL",
            "use `embedded`, or http(s)://[user:password@]host:port",
        )  # fmt: skip
    datasets = [d.name for d in config.datasets]
    for i, name in enumerate(datasets):
        if datasets.count(name) > 1:
            raise ConfigError(
                source, f"datasets[{i}].name", f"dataset `{name}` is defined twice", "rename one"
            )
