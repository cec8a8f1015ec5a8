"""The typed configuration of modelbus (``modelbus.yaml``), read once at start and passed in."""

from modelbus.config.loader import ConfigError, load_config, parse_config
from modelbus.config.model import (
    AuthSettings,
    ChatSettings,
    ClickHouseSettings,
    Config,
    DatasetConfig,
    HeartbeatSettings,
    HistorySettings,
    HttpSettings,
    ModelConfig,
    ModelParams,
    NatsSettings,
    NsqlSettings,
    QueueSettings,
    ResponsesSettings,
    RuntimeSettings,
)

__all__ = (
    "AuthSettings",
    "ChatSettings",
    "ClickHouseSettings",
    "Config",
    "ConfigError",
    "DatasetConfig",
    "HeartbeatSettings",
    "HistorySettings",
    "HttpSettings",
    "ModelConfig",
    "ModelParams",
    "NatsSettings",
    "NsqlSettings",
    "QueueSettings",
    "ResponsesSettings",
    "RuntimeSettings",
    "load_config",
    "parse_config",
)
