"""Pick the provider for a configured model from its ``from:`` prefix."""

from __future__ import annotations

from collections.abc import Mapping

from services.config import ModelConfig
from services.runtime.worker import ModelState
from workers.model.providers.base import Provider
from workers.model.providers.local import LocalProvider
from workers.model.providers.openai_compat import OpenAIProvider

__all__ = ("DEFAULT_CAPACITY", "create_provider")

DEFAULT_CAPACITY = {"local": 1, "openai": 16}


def create_provider(model: ModelConfig, state: ModelState, *, environ: Mapping[str, str]) -> Provider:
    if model.provider == "local":
        return LocalProvider(model, state, environ=environ)
    if model.provider == "openai":
        return OpenAIProvider(model, state)
    raise ValueError(f"no provider for `{model.from_}`")  # the config loader refuses these first
