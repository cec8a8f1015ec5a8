"""Pick the provider for a configured model from its ``from:`` prefix, and its slots (capacity)."""

from __future__ import annotations

from collections.abc import Mapping

from modelbus.config import ModelConfig
from modelbus.config.spicepod import USAGE_TIER_CONCURRENCY
from modelbus.workers.model.providers.base import Provider
from modelbus.workers.model.providers.local import LocalProvider
from modelbus.workers.model.providers.openai_compat import OpenAIProvider
from modelbus.workers.model.state import ModelState

__all__ = ("OPENAI_CAPACITY", "capacity_of", "create_provider")

OPENAI_CAPACITY = 16


def capacity_of(model: ModelConfig) -> int:
    """A worker's slots for ``model``: llama-server's ``parallel`` for a local one, else ``capacity``, else
    the concurrency of Spice's ``openai_usage_tier``, else 16."""
    params = model.params
    if model.provider == "local":
        return params.parallel
    if params.capacity:
        return params.capacity
    return USAGE_TIER_CONCURRENCY[params.openai_usage_tier] if params.openai_usage_tier else OPENAI_CAPACITY


def create_provider(model: ModelConfig, state: ModelState, *, environ: Mapping[str, str]) -> Provider:
    if model.provider == "local":
        return LocalProvider(model, state, environ=environ)
    if model.provider == "openai":
        return OpenAIProvider(model, state)
    raise ValueError(f"no provider for `{model.from_}`")  # the config loader refuses these first
