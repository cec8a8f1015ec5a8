"""When a request waiting for a model should stop waiting: the model has been ``error`` for a while.

A new request for a model in ``error`` is refused at once (503). One already queued would otherwise wait for
its deadline (minutes) for a worker that may not come; it gets the same 503 once the model has been ``error``
for ``runtime.chat.error_grace`` seconds, as this ingress saw it (no clocks of other machines involved). The
grace lets a lone worker that crashed be replaced without failing what waits for it; ``loading`` (a worker
restarting or reloading) is waited for until the deadline.
"""

from __future__ import annotations

import time

from modelbus.ingress.errors import ApiError, model_not_ready
from modelbus.ingress.view_store import ModelViewStore
from modelbus.runtime.work_queue.client import GiveUp
from modelbus.schemas.status import ModelStatus

__all__ = ("check_chat_model", "check_model", "give_up_when_failed")


def give_up_when_failed(views: ModelViewStore, model: str, *, grace: float) -> GiveUp:
    """What a request for ``model`` asks while it waits: the 503 ``model_not_ready`` to answer instead."""
    failing_since: float | None = None

    def check() -> BaseException | None:
        nonlocal failing_since
        view = views.get(model)
        if view is not None and view.status is not ModelStatus.ERROR:
            failing_since = None
            return None
        now = time.monotonic()
        failing_since = now if failing_since is None else failing_since
        return model_not_ready(model, view) if now - failing_since >= grace else None

    return check


def check_chat_model(views: ModelViewStore, model: str, embedding_models: frozenset[str]) -> None:
    """:func:`check_model` for a chat or a response: an embedding model answers only ``POST
    /v1/embeddings``, so asking it for one is a 400 first."""
    if model in embedding_models:
        raise ApiError(
            400, f"`{model}` is an embedding model: use POST /v1/embeddings", code="model_not_supported",
            param="model",
        )  # fmt: skip
    check_model(views, model)


def check_model(views: ModelViewStore, model: str) -> None:
    """Whether ``model`` can take a request now: 503 before the registry has reported, 404 unknown, 503
    not ready."""
    if not views.initialized:
        raise ApiError(
            503,
            "the model registry has not reported yet; retry shortly",
            code="app_not_initialized",
            headers={"Retry-After": "1"},
        )
    view = views.get(model)
    if view is None:
        raise ApiError(404, f"The model `{model}` does not exist", code="model_not_found", param="model")
    if view.status is not ModelStatus.READY:
        raise model_not_ready(model, view)
