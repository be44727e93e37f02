"""Stage ingest: write a dataset's raw files, its fixed split and a checksum manifest.

Reads ``data.<dataset>``; writes ``data/raw/<dataset>/``. What a dataset is (sklearn's
digits, generated number translations, a user's corpus) is the business of its module
in ``components/data``.
"""

from __future__ import annotations

from components.training.storage import written_whole
from pipelines.layout import load_data, run_stage, stage_args


def main() -> None:
    args = stage_args(__doc__, with_algo=False, with_dataset=True)
    data, layout = load_data(args, everything=True)  # the first stage of a cold repro: a typo anywhere stops it
    out = layout.raw(data.name)
    with written_whole(out) as tmp:
        manifest = data.module.ingest(data.config, tmp)
    print(f"ingest {args.dataset}: {manifest['num_samples']} samples, split {manifest['split_sizes']} -> {out}")


if __name__ == "__main__":
    run_stage(main)
