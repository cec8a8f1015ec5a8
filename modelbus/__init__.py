"""modelbus: Spice AI's LLM HTTP API (models, chat completions, NSQL) as an event-driven NATS worker system.

The packages are layers, and imports point one way (``tests/test_layering.py`` checks it)::

    schemas -> config -> runtime -> {ingress, workers, registry, history} -> cli

See ``docs/architecture.md``.
"""
