"""The shape of ``modelbus.yaml``: spicepod-like ``models:`` and ``datasets:`` plus a ``runtime:`` block.

Every Struct forbids unknown fields, so a typo fails at start instead of being ignored. Durations are in
seconds.
"""

from __future__ import annotations

import os
from typing import Annotated, Any, Literal

import msgspec

__all__ = (
    "RUNTIME_TOOLS",
    "AuthSettings",
    "ChatSettings",
    "ClickHouseSettings",
    "Config",
    "DatasetConfig",
    "DatasetExample",
    "EmbedSettings",
    "EmbeddingConfig",
    "EmbeddingParams",
    "HeartbeatSettings",
    "HistorySettings",
    "HttpSettings",
    "LoadBalance",
    "ModelConfig",
    "ModelParams",
    "NatsSettings",
    "NsqlSettings",
    "QueueSettings",
    "ResponsesSettings",
    "Route",
    "RuntimeSettings",
    "RuntimeTool",
    "WorkerConfig",
)

Seconds = Annotated[float, msgspec.Meta(gt=0)]
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    pass


class HttpSettings(_Section, frozen=True):
    host: str = "127.0.0.1"
    port: Port = 8090
    max_body_bytes: PositiveInt = 4 * 1024 * 1024
    # ingress processes `modelbus up` starts, sharing the port (SO_REUSEPORT); each is one core at most.
    # `auto`: half the cores this process may use (the workers and nats-server want the other half)
    processes: PositiveInt | Literal["auto"] = 1

    @property
    def process_count(self) -> int:
        if self.processes == "auto":
            return max(1, len(os.sched_getaffinity(0)) // 2)
        return self.processes


class NatsSettings(_Section, frozen=True):
    """``url: embedded`` (the default) starts nats-server from the venv on loopback."""

    url: str = "embedded"
    user: str | None = None
    password: str | None = None
    token: str | None = None
    creds_file: str | None = None
    connect_timeout: Seconds = 5.0
    drain_timeout: Seconds = 10.0

    @property
    def embedded(self) -> bool:
        return self.url == "embedded"


class AuthSettings(_Section, frozen=True):
    """API keys accepted in ``X-API-Key`` or ``Authorization: Bearer``; none configured means open."""

    api_keys: tuple[Annotated[str, msgspec.Meta(min_length=8)], ...] = ()


class HeartbeatSettings(_Section, frozen=True):
    interval: Seconds = 2.0
    ttl_intervals: PositiveInt = 3

    @property
    def ttl(self) -> float:
        return self.interval * self.ttl_intervals


class QueueSettings(_Section, frozen=True):
    """How the jobs of one kind travel: a bounded work queue, deadlines, redelivery, keep-alives."""

    queue_depth: PositiveInt = 256  # queued + running jobs per queue; beyond it: 429
    request_timeout: Seconds = 300.0  # the deadline of a job, queued time included
    ack_wait: Seconds = 5.0  # a worker that stops confirming progress this long is presumed dead
    max_deliver: PositiveInt = 5  # deliveries of one job (a worker that dies hands it to another)
    keepalive: Seconds = 1.0  # how often a busy worker says it is alive to the client
    retry_after: PositiveInt = 1  # the Retry-After a 429 carries


class ChatSettings(QueueSettings, frozen=True):
    """Chat requests: one bounded work queue per model."""

    # a request waiting in the queue (no worker holds it) whose model has been `error` this long gets the 503
    # a new request would get; `loading` (a worker restarting) is waited for until the deadline
    error_grace: Annotated[float, msgspec.Meta(ge=0)] = 5.0


class ClickHouseSettings(_Section, frozen=True):
    """Where datasets live and the limits untrusted (model-written) SQL runs under.

    ``url: embedded`` (the default) runs the ClickHouse engine in-process (chdb) on a data directory of
    the NSQL worker's own (``data_dir``, default ``<state_dir>/clickhouse``; one process per directory).
    ``http(s)://[user:password@]host:port`` talks to a ClickHouse server with the same code.
    """

    url: str = "embedded"
    username: str | None = None
    password: str | None = None
    data_dir: str | None = None
    database: str = "modelbus"  # file and sample datasets are loaded here
    sandbox_database: str = "modelbus_sandbox"  # an empty database: the current one for untrusted SQL
    readers: PositiveInt = 4  # concurrent untrusted queries (one reader connection each)
    max_execution_time: Seconds = 10.0
    max_result_rows: PositiveInt = 10_000
    max_result_bytes: PositiveInt = 64 * 1024 * 1024
    max_memory_usage: PositiveInt = 1024 * 1024 * 1024
    max_sql_chars: PositiveInt = 20_000

    @property
    def embedded(self) -> bool:
        return self.url == "embedded"


class NsqlSettings(QueueSettings, frozen=True):
    """Text-to-SQL: its work queue, attempts per request and how much context goes into the prompt."""

    request_timeout: Seconds = 120.0
    model: str | None = None  # the default model for /v1/nsql (else the one model with datasets)
    max_attempts: PositiveInt = 3
    capacity: PositiveInt = 4  # requests one NSQL worker runs at once
    max_context_datasets: PositiveInt = 4
    # example rows in the prompt (with sample_data_enabled): 0 by default, because whole rows lead the small
    # default model to order single rows instead of aggregating (measured on the seed's question); the
    # distinct values of low-cardinality columns, which help with filters, are still given
    sample_rows: Annotated[int, msgspec.Meta(ge=0)] = 0
    distinct_values: Annotated[int, msgspec.Meta(ge=0)] = 10
    # SQL candidates per attempt, asked at once (the local engine batches them); their results are voted on.
    # The first is greedy, the others sampled at candidate_temperature.
    candidates: PositiveInt = 1
    candidate_temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] = 0.7
    # the temperature of a retry (after a failed attempt): at 0 a small model repeats its statement
    retry_temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] = 0.4
    max_sql_tokens: PositiveInt = 512  # per model call: a sampled reply must not run on to the context's end

    # --- POST /v1/nsql replies and streams (modelbus/workers/nsql/reply_parts.py,
    # modelbus/ingress/nsql_reply.py) --- The largest rendered answer; a larger one is 400 result_too_large.
    # The worker renders it and the ingress reassembles it in memory; it crosses NATS in max_payload-sized
    # parts, so keep it well below the server's max_pending (64 MiB by default).
    max_reply_bytes: PositiveInt = 16 * 1024 * 1024
    stream_keepalive: Seconds = 5.0  # `stream: true`: a `: nsql still in progress` comment this often


class HistorySettings(_Section, frozen=True):
    """Task history: every request and model status change as a row of ClickHouse's ``task_history``.

    ``record`` says what of prompts and answers is kept: ``none``, the first ``max_chars`` characters
    (``truncated``), or all of it (``full``). Events wait on the ``MODELBUS_TASKS`` stream until every sink
    has written them, in batches of up to ``batch_size`` or every ``flush_interval`` seconds; while sinks
    are away, up to ``retention`` seconds and ``max_bytes``.

    ``enabled`` left unset is on only where the history can be queried: with a ClickHouse server
    (``runtime.clickhouse.url``), or with datasets (an NSQL worker keeps it in its embedded engine). A
    deployment with the embedded engine and no datasets would pay an engine nobody can ask; ``true`` there
    starts one anyway (``modelbus up`` runs the history sink), keeping the history on disk for later.
    """

    enabled: bool | None = None  # unset: resolved by the loader (see above); always a bool after loading
    record: Literal["none", "truncated", "full"] = "truncated"
    max_chars: PositiveInt = 200
    table: str = "task_history"  # in runtime.clickhouse.database
    keep_days: Annotated[int, msgspec.Meta(ge=0)] = 30  # rows older than this are dropped (0: kept forever)
    batch_size: PositiveInt = 1000
    flush_interval: Seconds = 1.0
    retention: Seconds = 7 * 24 * 3600.0
    max_bytes: PositiveInt = 1024 * 1024 * 1024


class EmbedSettings(QueueSettings, frozen=True):
    """Embedding requests: one bounded work queue per embedding model, and what one request may ask."""

    request_timeout: Seconds = 60.0
    max_inputs: PositiveInt = 2048  # inputs per request (OpenAI's limit); beyond it: 400
    max_tokens: PositiveInt = 300_000  # tokens per request, all inputs together (OpenAI's); beyond it: 400


class ResponsesSettings(_Section, frozen=True):
    """``POST /v1/responses``: how long a stored response (``store: true``) is kept, for
    ``previous_response_id`` and ``GET /v1/responses/{id}`` (OpenAI keeps them 30 days)."""

    keep: Seconds = 30 * 24 * 3600.0


class RuntimeSettings(_Section, frozen=True):
    http: HttpSettings = HttpSettings()
    nats: NatsSettings = NatsSettings()
    auth: AuthSettings = AuthSettings()
    heartbeat: HeartbeatSettings = HeartbeatSettings()
    clickhouse: ClickHouseSettings = ClickHouseSettings()
    nsql: NsqlSettings = NsqlSettings()
    chat: ChatSettings = ChatSettings()
    history: HistorySettings = HistorySettings()
    responses: ResponsesSettings = ResponsesSettings()
    embed: EmbedSettings = EmbedSettings()
    state_dir: str = ".modelbus"
    shutdown_grace: Seconds = 10.0
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = "auto"


# Spice's runtime tools a model may be given (``params.tools``), answered by NSQL workers over its datasets
RuntimeTool = Literal["list_datasets", "table_schema", "sample_data", "sql", "nsql"]
RUNTIME_TOOLS: tuple[RuntimeTool, ...] = ("list_datasets", "table_schema", "sample_data", "sql", "nsql")


class ModelParams(_Section, frozen=True):
    """Per-model parameters. Provider-specific keys are ignored by other providers.

    Spice's spellings (``openai_temperature``, ``tools: auto``, ``spice_tools``, ...) are translated into
    these by :mod:`modelbus.config.spicepod` before the file is decoded.
    """

    capacity: PositiveInt | None = None  # default: `parallel` for local, 16 for openai (or the usage tier's)
    system_prompt: str | None = None
    defaults: dict[str, Any] = {}  # OpenAI request fields applied when the request leaves them out
    # Spice's runtime tools over the model's datasets; the model worker runs the tool loop
    tools: tuple[RuntimeTool, ...] = ()
    tool_recursion_limit: PositiveInt = 10  # model turns that may call tools, per request
    # POST /v1/responses: `adapted` onto chat completions (any model), or `native` (an OpenAI endpoint that
    # serves /responses itself: the request is passed through)
    responses_api: Literal["adapted", "native"] = "adapted"
    # openai provider
    endpoint: str = "https://api.openai.com/v1"
    api_key: str | None = None
    openai_api_key: str | None = None  # the spicepod spelling of api_key
    openai_org_id: str | None = None  # sent as OpenAI-Organization
    openai_project_id: str | None = None  # sent as OpenAI-Project
    # Spice's outbound concurrency by OpenAI usage tier: the capacity when `capacity` is not set
    openai_usage_tier: Literal["free", "tier1", "tier2", "tier3", "tier4", "tier5"] | None = None
    check_timeout: Seconds = 10.0
    recheck_initial: Seconds = 1.0
    recheck_max: Seconds = 60.0
    # local provider (llama.cpp's llama-server, one child process per model)
    sha256: str | None = None
    url: str | None = None
    parallel: PositiveInt = 4  # llama-server's slots (-np): requests generated at once, batched together
    n_ctx: PositiveInt = 4096  # context per slot, in tokens (llama-server gets -c parallel * n_ctx)
    n_threads: PositiveInt | None = None  # default: every core this process may use
    llama_server_args: tuple[str, ...] = ()  # more llama-server flags, passed as they are
    load_timeout: Seconds = 300.0  # from start until llama-server answers its health check


class ModelConfig(_Section, frozen=True):
    name: str
    from_: str = msgspec.field(name="from")
    description: str | None = None
    datasets: tuple[str, ...] = ()
    params: ModelParams = ModelParams()
    dependsOn: tuple[str, ...] = ()

    @property
    def provider(self) -> str:
        return self.from_.partition(":")[0]

    @property
    def provider_model(self) -> str:
        return self.from_.partition(":")[2]


class Route(_Section, frozen=True):
    """One member of a load-balancing worker: a model, with its place in the order or its weight."""

    from_: str = msgspec.field(name="from")
    order: PositiveInt | None = None
    weight: PositiveInt | None = None


class LoadBalance(_Section, frozen=True):
    routing: Annotated[tuple[Route, ...], msgspec.Meta(min_length=1)]


class WorkerConfig(_Section, frozen=True, kw_only=True):
    """Spice's ``workers:`` entry of kind ``load_balance``: a model clients call by ``name``, answered by the
    first ready member (``order``), or a member picked by ``weight``, or in turn (neither), with the next
    member answering when one fails before its first token."""

    name: str
    type: Literal["load_balance"] = "load_balance"
    description: str | None = None
    load_balance: LoadBalance

    @property
    def members(self) -> tuple[str, ...]:
        return tuple(route.from_ for route in self.load_balance.routing)


class EmbeddingParams(_Section, frozen=True):
    """Per-embedding-model parameters."""

    capacity: PositiveInt = 4  # engine calls one worker runs at once for this model
    max_batch: PositiveInt = 32  # inputs in one engine call: concurrent requests are joined up to this
    batch_wait: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.002  # seconds to wait for more to join
    dimensions: bool = False  # whether the model takes `dimensions` (OpenAI's text-embedding-3 do)
    # openai provider
    endpoint: str = "https://api.openai.com/v1"
    api_key: str | None = None
    openai_api_key: str | None = None  # the spicepod spelling of api_key
    check_timeout: Seconds = 10.0
    recheck_initial: Seconds = 1.0
    recheck_max: Seconds = 60.0


class EmbeddingConfig(_Section, frozen=True):
    """One embedding model (Spice's ``embeddings:``): ``from: openai:<model>``, or ``local:<catalog name>``
    (``local:multilingual-e5-small``)."""

    name: str
    from_: str = msgspec.field(name="from")
    description: str | None = None
    datasets: tuple[str, ...] = ()  # the datasets it embeds (listed in /v1/models)
    params: EmbeddingParams = EmbeddingParams()

    @property
    def provider(self) -> str:
        return self.from_.partition(":")[0]

    @property
    def provider_model(self) -> str:
        return self.from_.partition(":")[2]


class DatasetExample(_Section, frozen=True):
    """A worked example for NSQL prompts: a question about the dataset and the SQL that answers it."""

    question: Annotated[str, msgspec.Meta(min_length=1)]
    sql: Annotated[str, msgspec.Meta(min_length=1)]


class DatasetConfig(_Section, frozen=True):
    name: str
    from_: str = msgspec.field(name="from")
    description: str | None = None
    params: dict[str, str] = {}
    # NSQL prompt context: the column other datasets join on (else inferred: a shared column that has a
    # distinct value in every row), and worked examples (a built-in sample has its own; these replace them)
    primary_key: str | None = None
    examples: tuple[DatasetExample, ...] | None = None


class Config(_Section, frozen=True):
    version: str = "v1"
    kind: Literal["Modelbus", "Spicepod"] = "Modelbus"
    name: str = "modelbus"
    runtime: RuntimeSettings = RuntimeSettings()
    models: tuple[ModelConfig, ...] = ()
    embeddings: tuple[EmbeddingConfig, ...] = ()
    datasets: tuple[DatasetConfig, ...] = ()
    workers: tuple[WorkerConfig, ...] = ()

    def model(self, name: str) -> ModelConfig | None:
        return next((m for m in self.models if m.name == name), None)

    def embedding(self, name: str) -> EmbeddingConfig | None:
        return next((m for m in self.embeddings if m.name == name), None)

    def worker(self, name: str) -> WorkerConfig | None:
        return next((w for w in self.workers if w.name == name), None)
