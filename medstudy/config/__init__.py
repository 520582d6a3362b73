"""One frozen dataclass per stage, built from a notebook's papermill parameters.

``Stage.from_params(**params)`` rejects unknown names (listing the valid ones) and wrong types
(naming the field) before any work; ``__post_init__`` checks values (dataset, arm, method,
fraction in (0, 1], …) and names the valid choices. A config is the input of ``run_id``.
"""

from medstudy.config.analysis import (
    ClaimsConfig,
    InterpretConfig,
    RepresentationsConfig,
    RobustnessConfig,
)
from medstudy.config.base import (
    FUSION_MODES,
    PROTOCOLS,
    ConfigError,
    StageConfig,
    validate_arm,
    validate_backbone_name,
    validate_dataset,
    validate_device,
    validate_image_size,
)
from medstudy.config.training import LabelEfficiencyConfig, PretrainConfig, TransferConfig

__all__ = [
    "FUSION_MODES",
    "PROTOCOLS",
    "ClaimsConfig",
    "ConfigError",
    "InterpretConfig",
    "LabelEfficiencyConfig",
    "PretrainConfig",
    "RepresentationsConfig",
    "RobustnessConfig",
    "StageConfig",
    "TransferConfig",
    "validate_arm",
    "validate_backbone_name",
    "validate_dataset",
    "validate_device",
    "validate_image_size",
]
