"""Evaluation protocols on frozen or fine-tuned encoders (DESIGN §6).

- frozen features (:mod:`.features`), the linear probe on them (:mod:`.linear`) and the
  weighted kNN (:mod:`.knn`);
- full fine-tuning with early stopping on val, the study's one supervised loop (:mod:`.finetune`);
- DVME fusion of several frozen encoders (:mod:`.dvme`, Truong et al. 2021);
- the orchestration of notebooks 02/03 (:mod:`.transfer`) and their tables/figures (:mod:`.plots`).
"""

from medstudy.evaluate.dvme import DVME, DVME_SETTINGS, TOKEN_MODES, DVMEProbe, train_dvme
from medstudy.evaluate.features import extract_features
from medstudy.evaluate.finetune import (
    FINETUNE_RECIPE,
    FitResult,
    SupervisedModule,
    TensorBatches,
    TrainSettings,
    finetune,
    fit_supervised,
    image_transform,
    predict_scores,
    predict_split,
    resolve_device,
)
from medstudy.evaluate.knn import knn_predict
from medstudy.evaluate.linear import L2_GRID, LinearProbe, fit_linear_probe, fit_logistic
from medstudy.evaluate.plots import (
    label_efficiency_table,
    metric_function,
    plot_label_efficiency,
    plot_transfer,
    primary_metric,
    transfer_table,
)
from medstudy.evaluate.transfer import (
    TRANSFER_STAGES,
    Encoder,
    EncoderBank,
    TransferData,
    Unit,
    cached_features,
    feature_cache_dir,
    finetune_settings,
    load_transfer_data,
    load_unit_classifier,
    plan_units,
    reuse_unit,
    run_transfer,
    unit_paths,
    weights_fingerprint,
)

__all__ = [
    "DVME",
    "DVME_SETTINGS",
    "FINETUNE_RECIPE",
    "L2_GRID",
    "TOKEN_MODES",
    "TRANSFER_STAGES",
    "DVMEProbe",
    "Encoder",
    "EncoderBank",
    "FitResult",
    "LinearProbe",
    "SupervisedModule",
    "TensorBatches",
    "TrainSettings",
    "TransferData",
    "Unit",
    "cached_features",
    "feature_cache_dir",
    "extract_features",
    "finetune",
    "finetune_settings",
    "fit_linear_probe",
    "fit_logistic",
    "fit_supervised",
    "image_transform",
    "knn_predict",
    "label_efficiency_table",
    "load_transfer_data",
    "load_unit_classifier",
    "metric_function",
    "plan_units",
    "plot_label_efficiency",
    "plot_transfer",
    "predict_scores",
    "predict_split",
    "primary_metric",
    "resolve_device",
    "reuse_unit",
    "run_transfer",
    "train_dvme",
    "transfer_table",
    "unit_paths",
    "weights_fingerprint",
]
