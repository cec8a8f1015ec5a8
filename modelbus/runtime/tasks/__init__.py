"""Task history as every process records it: W3C trace context (``tracing``), one span per piece of work
(``span``), published as events (``recorder``). The sink that writes them to ClickHouse is
``modelbus.history``."""
