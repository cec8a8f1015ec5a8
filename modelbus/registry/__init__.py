"""The registry: aggregates worker heartbeats into one view per model (KV bucket) and status events."""

from modelbus.registry.service import Registry

__all__ = ("Registry",)
