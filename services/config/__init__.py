"""The typed configuration of modelbus (``modelbus.yaml``), read once at start and passed in."""

from services.config.loader import ConfigError, load_config, parse_config
from services.config.model import (
    AuthSettings,
    ChatSettings,
    Config,
    DatasetConfig,
    HeartbeatSettings,
    HttpSettings,
    ModelConfig,
    ModelParams,
    NatsSettings,
    RuntimeSettings,
)

__all__ = (
    "AuthSettings",
    "ChatSettings",
    "Config",
    "ConfigError",
    "DatasetConfig",
    "HeartbeatSettings",
    "HttpSettings",
    "ModelConfig",
    "ModelParams",
    "NatsSettings",
    "RuntimeSettings",
    "load_config",
    "parse_config",
)
