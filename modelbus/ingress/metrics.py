"""The ingress's Prometheus metrics: requests, latency and tokens per route and model, and queue depths.

:class:`IngressMetrics` holds one :class:`~prometheus_client.CollectorRegistry` per app (never the global
one, so several ingresses in one process do not collide). :class:`RequestMetrics` is ASGI middleware around
everything else; when a response has ended it records:

- ``modelbus_http_requests_total{route, method, status, model}``;
- ``modelbus_http_request_duration_seconds{route, method, model}``: until the last byte, so for a stream
  until the stream ends;
- ``modelbus_http_stream_first_byte_seconds{route, model}``: for streamed responses, until the first chunk;
- ``modelbus_tokens_total{model, kind}`` (``kind`` is ``prompt`` or ``completion``), from
  ``scope["state"]["usage"] = (prompt_tokens, completion_tokens)`` that the chat and NSQL handlers set.

Every label is bounded. ``route`` is the route's template (``/v1/models/{model_id}``), never the raw path;
a request that reached no route (unknown path, wrong method, refused by auth, which runs before routing) is
``unmatched``. ``method`` is one of the HTTP methods the API knows, else ``other``. ``status`` is 0 for a
request aborted before a response started. ``model`` is ``scope["state"]["model"]`` when the model view
store knows it, ``other`` when it does not, and empty when the handler set none (every route but chat and
NSQL). The label children are cached per label set, so a request costs a dict lookup and two or three
observations.

:class:`QueueDepths` reports ``modelbus_queue_depth{queue, model}`` (``num_pending + num_ack_pending`` of
the work queue's consumer: waiting and being answered) and ``modelbus_queue_waiting{queue, model}``
(``num_pending``: waiting for a free slot, the signal to scale on). ``queue`` is ``chat`` (one consumer per
model in the view store) or ``nsql`` (the one shared consumer; ``model`` empty). The JetStream calls are
async and collectors are sync, so ``GET /metrics`` awaits :meth:`QueueDepths.refresh` first: it asks every
consumer at once (at most ``_CONCURRENCY`` at a time) under one ``timeout``, and reuses the answers for
``max_age`` seconds, so a burst of scrapes costs one round. A consumer that does not exist yet (no worker
has started for the model, so nothing can be waiting) reports 0; a consumer that could not be asked in time
has no sample in that scrape rather than a stale one.

Each refresh also keeps a sample per queue, at most one per ``sample_interval`` and for ``window``
seconds, for the status page's sparklines (``GET /metrics/queues``, :meth:`QueueDepths.view`). The
samples are taken when someone asks (the page, a scrape), so a gap in them is a time nobody looked.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

import anyio
import nats.errors
import structlog
from litestar.enums import ScopeType
from litestar.types import ASGIApp, HTTPScope, Message, Receive, Scope, Send
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from modelbus.ingress.view_store import ModelViewStore
from modelbus.schemas.chat import CHAT
from modelbus.schemas.dashboard import QueueSeries, QueuesView
from modelbus.schemas.nsql import NSQL

__all__ = ("MEDIA_TYPE", "IngressMetrics", "QueueDepths", "RequestMetrics")

log = structlog.get_logger(__name__)

# The classic text format every Prometheus version reads (prometheus_client writes it with these names);
# Litestar adds "; charset=utf-8" to text types.
MEDIA_TYPE = "text/plain; version=0.0.4"
# 1 ms … 60 s: a /v1/models answer from memory is ~1 ms, a long generation or NSQL question tens of seconds
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
UNMATCHED = "unmatched"
OTHER = "other"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_CONCURRENCY = 16


class IngressMetrics:
    """The collectors of one app, and the recording :class:`RequestMetrics` does once per response."""

    def __init__(self, views: ModelViewStore, queue_depths: QueueDepths | None = None) -> None:
        self.views = views
        self.registry = CollectorRegistry(auto_describe=True)
        self.queue_depths = queue_depths
        if queue_depths is not None:
            self.registry.register(queue_depths)
        self._requests = Counter(
            "modelbus_http_requests",
            "HTTP requests answered, by route template, method, status code and model",
            ("route", "method", "status", "model"),
            registry=self.registry,
        )
        self._duration = Histogram(
            "modelbus_http_request_duration_seconds",
            "Time from the request to the end of its response (a stream's last chunk)",
            ("route", "method", "model"),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._first_byte = Histogram(
            "modelbus_http_stream_first_byte_seconds",
            "Time from the request to the first chunk of a streamed response",
            ("route", "model"),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._tokens = Counter(
            "modelbus_tokens",
            "Tokens in the usage of chat and NSQL responses, by model and kind (prompt or completion)",
            ("model", "kind"),
            registry=self.registry,
        )
        # label children, looked up once per label set (prometheus_client's .labels() takes a lock)
        self._request_children: dict[tuple[str, str, int, str], tuple[Counter, Histogram]] = {}
        self._first_byte_children: dict[tuple[str, str], Histogram] = {}
        self._token_children: dict[str, tuple[Counter, Counter]] = {}

    def model_label(self, model: object) -> str:
        """The model as a label: a model the view store knows, else ``other``; empty when there is none."""
        if model is None:
            return ""
        if isinstance(model, str) and self.views.get(model) is not None:
            return model
        return OTHER

    def record(self, scope: HTTPScope, status: int, duration: float, first_byte: float | None) -> None:
        """One response has ended (the hot path: keep it to lookups and observations)."""
        route = scope.get("path_template") or UNMATCHED
        method: str = scope["method"]
        if method not in _METHODS:
            method = OTHER
        state: dict[str, Any] = scope.get("state") or {}
        model = self.model_label(state.get("model"))
        key = (route, method, status, model)
        children = self._request_children.get(key)
        if children is None:
            children = (
                self._requests.labels(route, method, str(status), model),
                self._duration.labels(route, method, model),
            )
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(duration)
        if first_byte is not None:
            histogram = self._first_byte_children.get((route, model))
            if histogram is None:
                histogram = self._first_byte.labels(route, model)
                self._first_byte_children[(route, model)] = histogram
            histogram.observe(first_byte)
        usage = state.get("usage")
        if usage is not None:
            self._count_tokens(model, usage)

    def _count_tokens(self, model: str, usage: object) -> None:
        if not (isinstance(usage, tuple) and len(usage) == 2):
            return
        counters = self._token_children.get(model)
        if counters is None:
            counters = (self._tokens.labels(model, "prompt"), self._tokens.labels(model, "completion"))
            self._token_children[model] = counters
        prompt, completion = usage
        if isinstance(prompt, int) and prompt > 0:
            counters[0].inc(prompt)
        if isinstance(completion, int) and completion > 0:
            counters[1].inc(completion)

    async def exposition(self) -> bytes:
        """The current metrics in Prometheus's text format (queue depths refreshed first)."""
        if self.queue_depths is not None:
            await self.queue_depths.refresh()
        return generate_latest(self.registry)


class RequestMetrics:
    """ASGI middleware: times every HTTP request to the end of its response and records it."""

    def __init__(self, app: ASGIApp, metrics: IngressMetrics) -> None:
        self._app = app
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self._app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0
        first_byte: float | None = None

        async def send_observed(message: Message) -> None:
            nonlocal status, first_byte
            if message["type"] == "http.response.start":
                status = message["status"]
            elif first_byte is None and message["type"] == "http.response.body" and message.get("more_body"):
                first_byte = time.perf_counter() - started  # a streamed response's first chunk
            await send(message)

        try:
            await self._app(scope, receive, send_observed)
        finally:
            self._metrics.record(scope, status, time.perf_counter() - started, first_byte)


class QueueDepths(Collector):
    """The work queues' depths, as of the last :meth:`refresh` (see the module docstring)."""

    def __init__(
        self,
        js: JetStreamContext,
        views: ModelViewStore,
        *,
        timeout: float = 1.0,
        max_age: float = 1.0,
        sample_interval: float = 5.0,
        window: float = 600.0,
    ) -> None:
        self._js = js
        self._views = views
        self._nsql_consumer = NSQL.durable("")
        self._timeout = timeout
        self._max_age = max_age
        self._consumers: dict[str, str] = {}  # model → its chat consumer's name
        self._samples: dict[tuple[str, str], tuple[int, int]] = {}  # (queue, model) → (pending, acked)
        self._refreshed = -max_age
        self._lock = anyio.Lock()
        self._limiter = anyio.CapacityLimiter(_CONCURRENCY)
        self.sample_interval = sample_interval
        self.window = window
        self._history: dict[tuple[str, str], deque[tuple[float, int, int]]] = {}
        self._sampled = -sample_interval

    def _chat_consumer(self, model: str) -> str:
        name = self._consumers.get(model)
        if name is None:
            name = self._consumers[model] = CHAT.durable(model)
        return name

    def _targets(self) -> list[tuple[str, str, str, str]]:
        """(queue, model, stream, consumer) for every queue to ask about."""
        targets = [(NSQL.name, "", NSQL.stream, self._nsql_consumer)]
        for view in self._views.views():
            targets.append((CHAT.name, view.id, CHAT.stream, self._chat_consumer(view.id)))
        return targets

    async def refresh(self) -> None:
        """Ask the consumers again, unless that was done less than ``max_age`` seconds ago."""
        async with self._lock:  # concurrent scrapes wait for one refresh instead of each doing their own
            if time.monotonic() - self._refreshed < self._max_age:
                return
            samples: dict[tuple[str, str], tuple[int, int]] = {}
            targets = self._targets()
            with anyio.move_on_after(self._timeout) as scope:
                async with anyio.create_task_group() as tg:
                    for queue, model, stream, consumer in targets:
                        tg.start_soon(self._ask, samples, (queue, model), stream, consumer)
            if scope.cancelled_caught:
                log.warning("metrics.queue_depth_timeout", answered=len(samples), asked=len(targets))
            self._samples = samples
            self._refreshed = time.monotonic()
            if self._refreshed - self._sampled >= self.sample_interval:
                self._sampled = self._refreshed
                self._keep(samples, targets, time.time())

    def _keep(
        self,
        samples: dict[tuple[str, str], tuple[int, int]],
        targets: list[tuple[str, str, str, str]],
        now: float,
    ) -> None:
        """Add this refresh's depths to each queue's recent samples; forget queues no longer asked about."""
        keep = int(self.window / self.sample_interval) + 1
        live = {(queue, model) for queue, model, _, _ in targets}
        for key in list(self._history):
            if key not in live:
                del self._history[key]
        for key, (pending, acked) in samples.items():
            series = self._history.get(key)
            if series is None:
                series = self._history[key] = deque(maxlen=keep)
            series.append((round(now, 3), pending + acked, pending))
        for series in self._history.values():
            while series and series[0][0] < now - self.window:
                series.popleft()

    async def view(self) -> QueuesView:
        """Every queue's depth now and over the last ``window`` seconds (refreshed first)."""
        await self.refresh()
        queues = []
        for queue, model, _, _ in self._targets():
            now = self._samples.get((queue, model))
            queues.append(
                QueueSeries(
                    queue=queue,
                    model=model,
                    depth=None if now is None else now[0] + now[1],
                    waiting=None if now is None else now[0],
                    samples=tuple(self._history.get((queue, model), ())),
                )
            )
        return QueuesView(interval_s=self.sample_interval, window_s=self.window, queues=tuple(queues))

    async def _ask(
        self,
        samples: dict[tuple[str, str], tuple[int, int]],
        key: tuple[str, str],
        stream: str,
        consumer: str,
    ) -> None:
        async with self._limiter:
            try:
                info = await self._js.consumer_info(stream, consumer, timeout=self._timeout)
            except NotFoundError:
                samples[key] = (0, 0)  # no worker has created it yet: nothing can be waiting for one
                return
            except (nats.errors.Error, TimeoutError) as exc:
                log.warning(
                    "metrics.queue_depth_failed", queue=key[0], model=key[1], error=type(exc).__name__
                )
                return
        samples[key] = (info.num_pending or 0, info.num_ack_pending or 0)

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            "modelbus_queue_depth",
            "Requests in a work queue, waiting for a slot or being answered (num_pending + num_ack_pending)",
            labels=("queue", "model"),
        )
        waiting = GaugeMetricFamily(
            "modelbus_queue_waiting",
            "Requests in a work queue waiting for a free slot (the consumer's num_pending)",
            labels=("queue", "model"),
        )
        for (queue, model), (pending, acked) in sorted(self._samples.items()):
            depth.add_metric((queue, model), pending + acked)
            waiting.add_metric((queue, model), pending)
        yield depth
        yield waiting

    def describe(self) -> Iterable[Metric]:
        return ()
