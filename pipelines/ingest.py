"""Stage ingest: write a dataset's raw files, its fixed split and a checksum manifest.

Reads ``data.<dataset>`` (seed, val_fraction, test_fraction); writes ``data/raw/<dataset>/``.
"""

from __future__ import annotations

import shutil

from components.config import dataset_config
from components.data import digits
from pipelines.layout import load, run_stage, stage_args

INGESTERS = {"digits": digits.ingest}


def main() -> None:
    args = stage_args(__doc__, with_algo=False, with_dataset=True)
    raw, layout = load(args)
    cfg = dataset_config(raw, args.dataset)
    out = layout.raw(args.dataset)
    shutil.rmtree(out, ignore_errors=True)
    manifest = INGESTERS[args.dataset](cfg, out)
    print(f"ingest {args.dataset}: {manifest['num_samples']} samples, split {manifest['split_sizes']} -> {out}")


if __name__ == "__main__":
    run_stage(main)
