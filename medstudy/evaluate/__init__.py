"""Evaluation protocols on frozen or fine-tuned encoders (DESIGN §6). Protocols only: the
orchestration of notebooks 02/03 is the transfer stage (:mod:`medstudy.transfer`) and the shared
tables and figures are :mod:`medstudy.figures`.

- frozen features (:mod:`.features`), the linear probe on them (:mod:`.linear`) and the
  weighted kNN, also the pretraining monitor's (:mod:`.knn`);
- full fine-tuning with early stopping on val, the study's one supervised loop (:mod:`.finetune`,
  its batches and transform in :mod:`.batches`);
- DVME fusion of several frozen encoders (:mod:`.dvme`, Truong et al. 2021).
"""

from medstudy.evaluate.batches import FINETUNE_RECIPE, TensorBatches, image_transform
from medstudy.evaluate.dvme import DVME, DVME_SETTINGS, TOKEN_MODES, DVMEProbe, train_dvme
from medstudy.evaluate.features import extract_features
from medstudy.evaluate.finetune import (
    FitResult,
    SupervisedModule,
    TrainSettings,
    finetune,
    fit_supervised,
    predict_scores,
    predict_split,
)
from medstudy.evaluate.knn import KNN_K, KNN_TEMPERATURE, knn_accuracy, knn_predict, knn_scores
from medstudy.evaluate.linear import L2_GRID, LinearProbe, fit_linear_probe, fit_logistic

__all__ = [
    "DVME",
    "DVME_SETTINGS",
    "FINETUNE_RECIPE",
    "KNN_K",
    "KNN_TEMPERATURE",
    "L2_GRID",
    "TOKEN_MODES",
    "DVMEProbe",
    "FitResult",
    "LinearProbe",
    "SupervisedModule",
    "TensorBatches",
    "TrainSettings",
    "extract_features",
    "finetune",
    "fit_linear_probe",
    "fit_logistic",
    "fit_supervised",
    "image_transform",
    "knn_accuracy",
    "knn_predict",
    "knn_scores",
    "predict_scores",
    "predict_split",
    "train_dvme",
]
