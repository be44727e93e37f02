"""Stage preprocess: verify the raw files and write WebDataset shards per split + stats.json.

Reads ``data.<dataset>`` and ``data/raw/<dataset>/``; writes ``data/shards/<dataset>/``
(shards, stats.json and the dataset's assets, e.g. a tokenizer fitted on train only).
"""

from __future__ import annotations

from components.data.manifest import verify_manifest
from components.training.storage import written_whole
from pipelines.layout import load_data, run_stage, stage_args


def main() -> None:
    args = stage_args(__doc__, with_algo=False, with_dataset=True)
    data, layout = load_data(args)
    raw_dir = layout.raw(args.dataset)
    manifest = verify_manifest(raw_dir, fix=f"re-create it with `dvc repro --force ingest-{args.dataset}`")
    out = layout.shards(args.dataset)
    with written_whole(out) as tmp:
        stats = data.module.preprocess(data.config, raw_dir, tmp, manifest)
    for name, s in stats["splits"].items():
        print(f"preprocess {args.dataset}/{name}: {s['samples']} samples in {len(s['shards'])} shards")


if __name__ == "__main__":
    run_stage(main)
