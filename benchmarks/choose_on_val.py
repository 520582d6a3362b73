"""Choose a profile setting on **val** (never test): fine-tune with each candidate value and
report the val primary metric, so the profile's comment can quote val figures only.

    python benchmarks/choose_on_val.py --profile quick --param backbone_lr_mult --values 0.1,1.0

For every dataset of the profile, ``natural_sup`` (the arm the setting matters most for: a
pretrained backbone) is fine-tuned with the profile's 02_transfer settings at seed 0 and each
candidate value, into a temporary results folder; the table gives the val metric of the
best-val epoch of each run. Test figures are never read.
"""

from __future__ import annotations

import argparse
import os
import tempfile

import pandas as pd

from medstudy.config import TransferConfig
from medstudy.grid import expand, load_profile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--param", default="backbone_lr_mult")
    parser.add_argument("--values", default="0.1,1.0")
    parser.add_argument("--arm", default="natural_sup")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    values = [float(v) for v in args.values.split(",")]
    jobs = [j for j in expand(load_profile(args.profile)) if j.notebook == "02_transfer"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MEDSTUDY_RESULTS_DIR"] = tmp
        from medstudy.transfer import run_transfer

        for job in jobs:
            for value in values:
                params = {
                    **job.params,
                    args.param: value,
                    "arms": [args.arm],
                    "finetune_arms": [args.arm],
                    "protocols": ["finetune"],
                    "seeds": [args.seed],
                    "fusion_arms": [],
                }
                params.pop("per_dataset", None)
                cfg = TransferConfig.from_params(**params)
                m = run_transfer(cfg)
                val = m[(m["split"] == "val") & (m["protocol"] == "finetune")]
                for metric, v in zip(val["metric"], val["value"], strict=True):
                    rows.append(
                        {"dataset": cfg.dataset, args.param: value, "metric": metric, "val": v}
                    )
    table = pd.DataFrame(rows).pivot_table(
        index=["dataset", "metric"], columns=args.param, values="val"
    )
    print(table.round(4).to_string())


if __name__ == "__main__":
    main()
