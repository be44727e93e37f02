"""GPU check: every algorithm's training loop on one CUDA device, as the train stage runs it.

Writes each dataset's shards with the project's own ingest and preprocess into a temporary
folder, then runs ``train_loop_per_worker`` in-process (no Ray, no MLflow) with
``use_gpu: true`` and ``precision: auto`` (bf16 autocast on CUDA) for a few epochs of each
algorithm in params.yaml, and prints one row per algorithm: status, where the weights ended up,
seconds per epoch, samples/s, the val metric and peak GPU memory. Exits 1 if any failed.

    python benchmarks/gpu_check.py --epochs 3
    python benchmarks/gpu_check.py --algos resnet gan --epochs 5

Needs torch with CUDA; ray and mlflow are not imported on this path.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

from components.config import to_dict
from components.models import get_family
from components.params import (
    dataset_config,
    dataset_module,
    family_name,
    load_params,
    train_config,
)
from components.training.loop import train_loop_per_worker

REPO = Path(__file__).resolve().parents[1]


class Rows:
    """Keeps each epoch's metrics."""

    def __init__(self) -> None:
        self.epochs: list[dict] = []

    def on_step(self, rows: list[dict]) -> None:
        pass

    def on_epoch(self, metrics: dict, checkpoint_dir) -> None:
        self.epochs.append(dict(metrics))


def shards_for(raw: dict, dataset: str, root: Path) -> Path:
    cfg, module = dataset_config(raw, dataset), dataset_module(raw, dataset)
    manifest = module.ingest(cfg, root / "raw" / dataset)
    module.preprocess(cfg, root / "raw" / dataset, root / "shards" / dataset, manifest)
    return root / "shards" / dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--algos", nargs="*", help="default: every algorithm in params.yaml")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("error: no CUDA device; run this on a GPU machine")
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    raw = load_params(REPO / "params.yaml")
    algos = args.algos or list(raw["algorithms"])
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        shards: dict[str, Path] = {}
        for algo in algos:
            dataset = raw["algorithms"][algo]["dataset"]
            row = {"algo": algo, "status": "ok"}
            try:
                if dataset not in shards:
                    t0 = time.perf_counter()
                    shards[dataset] = shards_for(raw, dataset, root)
                    print(f"{dataset}: shards in {time.perf_counter() - t0:.1f}s", flush=True)
                cfg = train_config(raw, algo)
                cfg.epochs, cfg.use_gpu, cfg.num_workers = args.epochs, True, 0
                hook = Rows()
                torch.cuda.reset_peak_memory_stats()
                t0 = time.perf_counter()
                train_loop_per_worker({"algo": algo, "family": family_name(raw, algo), "train": to_dict(cfg),
                                       "data_dir": str(shards[dataset]), "run_dir": str(root / "runs" / algo),
                                       "hooks": [hook]})
                torch.cuda.synchronize()
                last = hook.epochs[-1]
                metric = get_family(family_name(raw, algo)).VAL_METRIC
                row.update(wall_s=time.perf_counter() - t0, epoch_s=last.get("epoch_time_s", float("nan")),
                           samples_per_s=last.get("samples_per_s", float("nan")), metric=metric,
                           value=last.get(metric, float("nan")), peak_mib=torch.cuda.max_memory_allocated() / 2**20)
            except Exception as exc:  # report every algorithm, then fail
                row.update(status=f"FAILED: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
                traceback.print_exc()
            results.append(row)
            print(row, flush=True)
    print(f"\n{'algorithm':12s} {'status':8s} {'s/epoch':>8s} {'samples/s':>10s} {'peak MiB':>9s}  val metric")
    for r in results:
        if r["status"] == "ok":
            print(f"{r['algo']:12s} {'ok':8s} {r['epoch_s']:8.2f} {r['samples_per_s']:10.0f} {r['peak_mib']:9.0f}  "
                  f"{r['metric']} {r['value']:.4f}")
        else:
            print(f"{r['algo']:12s} {r['status']}")
    if any(r["status"] != "ok" for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
