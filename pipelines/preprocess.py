"""Stage preprocess: verify the raw files and write WebDataset shards per split + stats.json.

Reads ``data.<dataset>.samples_per_shard`` and ``data/raw/<dataset>/``; writes ``data/shards/<dataset>/``.
"""

from __future__ import annotations

import shutil

from components.config import dataset_config
from components.data import digits
from components.data.manifest import verify_manifest
from components.data.shards import write_shards
from pipelines.layout import load, run_stage, stage_args

LOADERS = {"digits": digits.load_raw}


def main() -> None:
    args = stage_args(__doc__, with_algo=False, with_dataset=True)
    raw, layout = load(args)
    cfg = dataset_config(raw, args.dataset)
    raw_dir = layout.raw(args.dataset)
    manifest = verify_manifest(raw_dir, fix=f"re-create it with `dvc repro --force ingest@{args.dataset}`")
    images, labels, split = LOADERS[args.dataset](raw_dir)
    out = layout.shards(args.dataset)
    shutil.rmtree(out, ignore_errors=True)
    stats = write_shards(out, {k: (images[idx], labels[idx]) for k, idx in split.items()},
                         cfg.samples_per_shard,
                         meta={"dataset": args.dataset, "num_classes": manifest["num_classes"],
                               "raw_manifest_sha256": {k: v["sha256"] for k, v in manifest["files"].items()}})
    for name, s in stats["splits"].items():
        print(f"preprocess {args.dataset}/{name}: {s['samples']} samples in {len(s['shards'])} shards")


if __name__ == "__main__":
    run_stage(main)
