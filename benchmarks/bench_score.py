"""Batch scoring on Ray Data against a plain in-process predict loop over the same shards.

The shard set is a split of the project's shards read ``--repeat`` times (its stats.json
entries listed again in a scratch folder that links the shard files), so that the figures
measure streaming rather than start-up. Both paths read with the project's reader, decode
with the evaluation transform and run the same registered model on batches of
``--batch-size``:

- (a) plain: one process, ``for shard: for batch: model(batch)``;
- (b) Ray Data: ``components.scoring.score`` (read tasks, one scoring actor per ``--actors``,
  Parquet written), on a local Ray started before the clock.

It prints rows/s of each, (b)/(a), and Ray Data's fixed cost (a one-shard run: actor start,
model loads, Parquet). Needs a registered model: run ``dvc repro`` first.

    python benchmarks/bench_score.py --algo resnet --repeat 100
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from components import scoring, tracking
from components.data.shards import read_stats
from components.params import load_params
from components.training import launch


def repeated(shards: Path, split: str, repeat: int, out: Path) -> Path:
    """A shard folder whose ``split`` lists ``shards``' own ``repeat`` times (files linked)."""
    stats = read_stats(shards)
    entries = stats["splits"][split]["shards"]
    out.mkdir(parents=True)
    for e in entries:
        (out / e["file"]).symlink_to((shards / e["file"]).resolve())
    stats["splits"] = {split: {**stats["splits"][split], "shards": entries * repeat,
                               "samples": stats["splits"][split]["samples"] * repeat}}
    (out / "stats.json").write_text(json.dumps(stats))
    return out


def plain(model_uri: str, shards: Path, split: str, batch_size: int) -> tuple[int, float]:
    """(rows, seconds) of the in-process loop, after the model is loaded: the same reading
    (``scoring.read_shards``, a shard at a time) and the same model, in one process, no Ray."""
    model = scoring.load_served(model_uri).model.eval()
    stats = read_stats(shards)
    pixel_max, rows, pending = float(stats["image"]["pixel_max"]), 0, []
    t0 = time.perf_counter()
    for item in scoring.shard_items(shards, split, stats):
        pending.append(scoring.read_shards({k: [v] for k, v in item.items()}, stats["image"], stats["fields"])["image"])
        if sum(map(len, pending)) >= batch_size:
            images = torch.from_numpy(np.concatenate(pending))
            full = len(images) // batch_size * batch_size
            for x in images[:full].split(batch_size):
                with torch.no_grad():
                    torch.softmax(model(x.float().div_(pixel_max)), 1).argmax(1)
            rows, pending = rows + full, [images[full:].numpy()]
    rest = np.concatenate(pending)
    if len(rest):
        with torch.no_grad():
            torch.softmax(model(torch.from_numpy(rest).float().div_(pixel_max)), 1).argmax(1)
    return rows + len(rest), time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algo", default="resnet")
    parser.add_argument("--root", type=Path, default=REPO, help="the project checkout (its shards and MLflow store)")
    parser.add_argument("--model", help="model URI (default models:/<algo>@champion of this checkout)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--repeat", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--actors", type=int, default=1)
    args = parser.parse_args()
    raw = load_params(args.root / "params.yaml")
    uri = tracking.configure(args.root)
    model_uri = args.model or f"models:/{args.algo}@champion"
    version = scoring.resolve_version(model_uri)
    model_uri = f"models:/{version.name}/{version.version}" if version is not None else model_uri
    shards = args.root / "data" / "shards" / raw["algorithms"][args.algo]["dataset"]
    with tempfile.TemporaryDirectory() as tmp:
        many = repeated(shards, args.split, args.repeat, Path(tmp) / "many")
        one = repeated(shards, args.split, 1, Path(tmp) / "one")
        rows_a, sec_a = plain(model_uri, many, args.split, args.batch_size)
        t0 = time.perf_counter()
        launch.init_ray()
        ray_s = time.perf_counter() - t0
        kw = {"tracking_uri": uri, "batch_size": args.batch_size, "actors": args.actors}
        fixed = scoring.score(model_uri, one, args.split, str(Path(tmp) / "out-one"), **kw)
        b = scoring.score(model_uri, many, args.split, str(Path(tmp) / "out-many"), **kw)
    rate_a, rate_b = rows_a / sec_a, b["rows"] / b["seconds"]
    print(f"\n{args.algo} ({model_uri}), {args.split} split x {args.repeat}: {rows_a:,} rows, batch {args.batch_size}, "
          f"{args.actors} actor(s), {torch.get_num_threads()} torch threads in the plain loop")
    print(f"(a) plain in-process loop   {sec_a:8.2f} s  {rate_a:10,.0f} rows/s")
    print(f"(b) Ray Data batch scoring  {b['seconds']:8.2f} s  {rate_b:10,.0f} rows/s  (Ray start {ray_s:.1f} s apart)")
    print(f"    fixed cost of a run (one shard, {fixed['rows']} rows): {fixed['seconds']:.2f} s")
    print(f"(b)/(a) throughput {rate_b / rate_a:.3f} (floor: >= 0.8); without the fixed cost "
          f"{b['rows'] / max(b['seconds'] - fixed['seconds'], 1e-9) / rate_a:.3f}")
    if "accuracy" in b:
        print(f"accuracy of (b): {b['accuracy']:.4f}")


if __name__ == "__main__":
    main()
