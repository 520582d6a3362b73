"""The registry: ``CLAIMS[id]`` is one published claim (DESIGN §1) and how it is tested."""

from __future__ import annotations

# the evaluators register every ``kind`` a Claim is checked against
from medstudy.claims import case_evaluators, evaluators  # noqa: F401
from medstudy.claims.claim import Claim

_SRINIVASAN = "Srinivasan et al. 2022, PLOS ONE (DR)"
_TRUONG = "Truong et al. 2021, ML4H"
# The curriculum is SSL too (a sequence of pretext tasks), so it joins every SSL comparison.
_SSL_ARMS = (
    ("ssl:*", "natural_sup"),
    ("natural_sup+ssl:*", "natural_sup"),
    ("curriculum", "natural_sup"),
)

CLAIMS: dict[str, Claim] = {
    c.id: c
    for c in (
        Claim(
            "C1",
            "Supervised natural-image init beats training from scratch (fine-tuning)",
            f"{_SRINIVASAN}; {_TRUONG}",
            "paired",
            ("transfer",),
            "finetune",
            (("natural_sup", "scratch"),),
        ),
        Claim(
            "C2",
            "In-domain SSL started from natural-image weights beats supervised natural-image init",
            _SRINIVASAN,
            "paired",
            ("transfer",),
            "finetune",
            (("natural_sup+ssl:*", "natural_sup"),),
        ),
        Claim(
            "C3",
            "Under linear evaluation with few labels, SSL features beat supervised features "
            "(published gains: DR kappa +14.79, PCam AUC +5.4, pneumonia AUC +7.03 points)",
            _TRUONG,
            "paired",
            ("label_efficiency",),
            "linear",
            _SSL_ARMS,
            fraction="smallest",
            published=(
                ("retinamnist", 0.1479),
                ("pcam28_subset", 0.054),
                ("pcam", 0.054),  # the full PCam (the published figure is on it; full profile)
                ("pneumoniamnist", 0.0703),
            ),
        ),
        Claim(
            "C4",
            "Masked image modelling (SparK) degrades less than contrastive SSL as the "
            "fine-tuning set shrinks",
            "Wolf et al. 2023, Sci Rep",
            "label_curve",
            ("label_efficiency",),
            "finetune",
            (("ssl:spark", "@contrastive"),),
            statistics=("slope", "aulc"),
            primary="slope",
            fraction="curve",
        ),
        Claim(
            "C5",
            "Curricular SSL beats scratch and natural-image init on chest X-ray pneumonia",
            "de Andrés Tamé et al. 2023",
            "paired",
            ("transfer",),
            "finetune",
            (("curriculum", "scratch"), ("curriculum", "natural_sup")),
            datasets=("pneumoniamnist",),
        ),
        Claim(
            "C6",
            "Pretrained models are more robust to image distortions",
            _SRINIVASAN,
            "robustness",
            ("robustness",),
            "finetune",
            (
                ("natural_sup", "scratch"),
                ("ssl:*", "scratch"),
                ("natural_sup+ssl:*", "scratch"),
                ("curriculum", "scratch"),
            ),
            statistics=("chance_drop",),
        ),
        Claim(
            "C7",
            "SSL (+ natural init) attributions focus more on lesions, including minute ones; "
            "SSL CXR models focus more on the lungs",
            f"{_SRINIVASAN}; de Andrés Tamé et al. 2023",
            "attribution",
            ("interpretability",),
            "finetune",
            (
                ("ssl:*", "natural_sup"),
                ("ssl:*", "scratch"),
                ("natural_sup+ssl:*", "natural_sup"),
                ("natural_sup+ssl:*", "scratch"),
                ("curriculum", "natural_sup"),
                ("curriculum", "scratch"),
            ),
            statistics=("mass_in_mask", "pointing_game"),
            synthetic=True,  # synth_lesions' masks are the lesion ground truth
            # each (arm pair, method, region) is its own instance: the claim names minute
            # lesions and the lungs separately, and a method can fail where another holds
            combine="each",
        ),
        Claim(
            "C8",
            "DVME fusion of several pretrained embeddings beats the best single embedding",
            _TRUONG,
            "fusion_vs_best",
            ("transfer",),
            "linear",
            (("fusion", "best single"),),
            combine="each",  # each DVME variant (and the no-attention ablation) on its own
        ),
        Claim(
            "C9",
            "Pretraining changes the statistics of the learned representations",
            _SRINIVASAN,
            "representation",
            ("representations",),
            "pretrained",  # the source: notebook 01's encoders, before any fine-tuning
            (
                ("natural_sup", "scratch"),
                ("ssl:*", "scratch"),
                ("natural_sup+ssl:*", "scratch"),
                ("curriculum", "scratch"),
            ),
            statistics=("effective_rank", "condition_number"),
            direction=0,  # "changes": either sign supports it
            combine="each",
        ),
    )
}
