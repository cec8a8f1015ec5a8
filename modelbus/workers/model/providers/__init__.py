"""The provider seam: how a model worker talks to whatever actually runs a model."""

from modelbus.workers.model.providers.base import CheckFailed, Provider, keep_ready
from modelbus.workers.model.providers.factory import create_provider

__all__ = ("CheckFailed", "Provider", "create_provider", "keep_ready")
