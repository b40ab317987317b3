"""Pydantic settings, one model per command, loadable from YAML on top of a named preset; one module per stage
(base, data, model, train, generate, evaluate) and per service (web, review, catalogue, jobs).

Every model forbids unknown keys, so a typo in a YAML file is reported with its dotted field name instead of
being silently ignored. Every name is re-exported here: ``from synthmed.config import TrainConfig``.
"""

from synthmed.config.base import Strict, deep_merge, format_validation_error, read_yaml, save_yaml
from synthmed.config.catalogue import (
    CatalogueImportConfig,
    CatalogueImportRealConfig,
    DatabaseConfig,
    ExportConfig,
    FromRequestsConfig,
)
from synthmed.config.data import DataConfig, EnhanceConfig, VolumeConfig, VolumeData
from synthmed.config.distill import DistillConfig
from synthmed.config.downstream import AugmentationConfig, SelectionConfig
from synthmed.config.evaluate import EvaluateConfig
from synthmed.config.generate import DecoderKind, EditConfig, GenerateConfig
from synthmed.config.jobs import WorkerConfig
from synthmed.config.model import AutoencoderArch, NetworkArch, NoiseConfig, UNetArch
from synthmed.config.review import StudyConfig
from synthmed.config.train import (
    DEFAULT_PRESET,
    PRESETS,
    AutoencoderConfig,
    Condition,
    ControlNetConfig,
    DiffusionConfig,
    RuntimeConfig,
    StageConfig,
    TrainConfig,
    build_train_config,
    load_train_config,
    read_run_config,
)
from synthmed.config.web import LOOPBACK_HOSTS, USERNAME_PATTERN, ServeConfig, UserConfig

__all__ = [
    "DEFAULT_PRESET",
    "LOOPBACK_HOSTS",
    "PRESETS",
    "USERNAME_PATTERN",
    "AugmentationConfig",
    "AutoencoderArch",
    "AutoencoderConfig",
    "CatalogueImportConfig",
    "CatalogueImportRealConfig",
    "Condition",
    "ControlNetConfig",
    "DataConfig",
    "DatabaseConfig",
    "DecoderKind",
    "DiffusionConfig",
    "DistillConfig",
    "EditConfig",
    "EnhanceConfig",
    "EvaluateConfig",
    "ExportConfig",
    "FromRequestsConfig",
    "GenerateConfig",
    "NetworkArch",
    "NoiseConfig",
    "RuntimeConfig",
    "SelectionConfig",
    "ServeConfig",
    "StageConfig",
    "Strict",
    "StudyConfig",
    "TrainConfig",
    "UNetArch",
    "UserConfig",
    "VolumeConfig",
    "VolumeData",
    "WorkerConfig",
    "build_train_config",
    "deep_merge",
    "format_validation_error",
    "load_train_config",
    "read_run_config",
    "read_yaml",
    "save_yaml",
]
