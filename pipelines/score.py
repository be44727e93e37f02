"""Batch scoring: a registered model over a shard set on Ray Data, written as Parquet.

    python -m pipelines.score --algo resnet                       # the champion on the test split
    python -m pipelines.score --algo resnet --model models:/resnet/3 --split val --actors 4 --gpus-per-actor 1
    python -m pipelines.score --algo clip                         # image embeddings
    python -m pipelines.score --algo clip --query "a photo of the digit three" --top-k 5

Reads the algorithm's dataset shards (or ``--data``, any folder of shards with ``stats.json``:
on a cluster, one that every node can read). Writes Parquet under the storage root
(``runtime.storage_root``, default ``.runs``): ``scores/<algo>/v<version>-<split>/``, and logs a
summary (rows, rows/s, accuracy where the shards are labelled) as a run of the algorithm's
MLflow experiment. Runs on a local Ray, or on the cluster at ``RAY_ADDRESS``. Not a DVC stage:
it reads the registry, which DVC does not track.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from components import scoring, tracking
from components.config import ConfigError
from components.training import launch
from pipelines.layout import load, quiet_third_parties, run_stage


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algo", required=True, help="algorithm name, e.g. resnet or clip")
    parser.add_argument("--params", default="params.yaml", help="path of params.yaml")
    parser.add_argument("--model", help="model URI (default models:/<algo>@champion)")
    parser.add_argument("--data", type=Path, help="shard folder (default the algorithm's dataset shards)")
    parser.add_argument("--split", default="test", choices=["train", "val", "test"])
    parser.add_argument("--out", help="Parquet folder (default <storage root>/scores/<algo>/v<version>-<split>)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--actors", type=int, default=1, help="model replicas (one model load each)")
    parser.add_argument("--gpus-per-actor", type=float, default=0.0)
    parser.add_argument("--query", help="CLIP: rank the images of an earlier scoring (--out) by this text")
    parser.add_argument("--top-k", type=int, default=5)
    args = parser.parse_args()
    if args.batch_size < 1 or args.actors < 1 or args.gpus_per_actor < 0 or args.top_k < 1:
        raise ConfigError("--batch-size, --actors and --top-k must be at least 1, --gpus-per-actor at least 0")
    return args


def main() -> None:
    args = parse_args()
    p, layout = load(args)
    algo = args.algo
    runtime = p.runtime
    scoring.task_of(p.family)  # a family batch scoring does not cover stops here
    uri = tracking.configure(layout.root)
    model_uri = args.model or f"models:/{algo}@{tracking.CHAMPION}"
    version = scoring.resolve_version(model_uri)  # pin it: an alias that moves mid-run changes nothing
    pinned = f"models:/{version.name}/{version.version}" if version is not None else model_uri
    tag = f"v{version.version}" if version is not None else "run"
    out = args.out or f"{layout.storage_root(runtime.storage_root)}/scores/{algo}/{tag}-{args.split}"
    if args.query:
        for rank, row in enumerate(scoring.query(pinned, out, args.query, args.top_k), 1):
            print(f"{rank:>3}  cosine {row['cosine']:.4f}  {row['shard']}/{row['key']}"
                  + (f"  label {row['label']}" if "label" in row else ""))
        return
    data = args.data or layout.shards(p.dataset)
    quiet_third_parties()
    launch.init_ray(runtime.ray_num_cpus)
    print(f"score {algo}: {pinned} over {data} ({args.split}) with {args.actors} actor(s) -> {out}", flush=True)
    summary = scoring.score(pinned, data, args.split, out, tracking_uri=uri, batch_size=args.batch_size,
                            actors=args.actors, gpus_per_actor=args.gpus_per_actor)
    client = tracking.MlflowClient()
    run = client.create_run(tracking.experiment_id(algo, layout.root), run_name=f"score-{args.split}",
                            tags={"stage": "score", "algo": algo, "model_uri": pinned, "output": out})
    now = int(time.time() * 1000)
    tracking.log_batch(client, run.info.run_id, metrics=[
        tracking.Metric(f"score_{k}", float(v), now, 0) for k, v in summary.items() if isinstance(v, (int, float))])
    client.set_terminated(run.info.run_id)
    figures = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                        for k, v in summary.items() if k != "columns")
    print(f"score {algo}: {figures}; columns {summary['columns']}; MLflow run {run.info.run_id}")


if __name__ == "__main__":
    run_stage(main)
