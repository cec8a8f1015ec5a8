"""How an embedding worker answers one job: its inputs through the model's batcher, OpenAI's answer back.

The job's life on the bus is the runtime's :class:`~modelbus.runtime.work_queue.consumer.JobConsumer`
(commit at the result: a worker that stops hands the job to another). The answer is OpenAI's ``list`` of
``embedding`` objects with their ``index``, as floats or, with ``encoding_format: base64``, as the base64
of little-endian float32 (what the official SDKs decode), and the ``usage``.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Mapping
from typing import Any

import msgspec

from modelbus.runtime.tasks.summaries import Usage
from modelbus.runtime.work_queue.consumer import Job
from modelbus.schemas.embeddings import EmbedRequest, EmbedResult
from modelbus.workers.embed.batcher import Batcher
from modelbus.workers.model.state import ModelState

__all__ = ("EmbedHandler", "encode_vector")

_encoder = msgspec.json.Encoder()


def encode_vector(vector: list[float], encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return vector


class EmbedHandler:
    """The embedding jobs of one hosted model."""

    def __init__(self, model: str, state: ModelState, batcher: Batcher) -> None:
        self.model = model
        self.state = state
        self.batcher = batcher

    def describe(self, request: EmbedRequest) -> Mapping[str, Any]:
        return {"model": request.model, "inputs": len(request.inputs)}

    async def handle(self, job: Job[EmbedRequest]) -> None:
        request = job.request
        self.state.requests += 1
        embedded = await self.batcher.embed(
            list(request.inputs), dimensions=request.dimensions, user=request.user, deadline=request.deadline
        )
        data = [
            {"object": "embedding", "index": i, "embedding": encode_vector(v, request.encoding_format)}
            for i, v in enumerate(embedded.vectors)
        ]
        usage = {"prompt_tokens": embedded.prompt_tokens, "total_tokens": embedded.prompt_tokens}
        job.span.set_usage(Usage(prompt_tokens=embedded.prompt_tokens))
        job.span.labels["inputs"] = str(len(request.inputs))
        answer = {"object": "list", "data": data, "model": request.model, "usage": usage}
        body = msgspec.Raw(_encoder.encode(answer))
        await job.send(EmbedResult(**job.stamp(), data=body, prompt_tokens=embedded.prompt_tokens))

    def done(self, job: Job[EmbedRequest], seconds: float) -> None:
        self.state.count_job(job, seconds)
