"""Shared fixtures: tiny real WebDataset shards written by the project's own code."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

# Under pytest -n, each worker's processes (its stages, its Ray's workers) get an equal share of the
# cores as their thread count: two processes of 2 PyTorch threads each on 2 cores slow each other
# down many times over (OpenMP threads spin-wait for cores the other holds).
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    _threads = str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, _threads)

import numpy as np
import pytest
import yaml

from components.data import images
from components.data.writer import write_shards

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


@pytest.fixture(scope="session")
def repo_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


@pytest.fixture(scope="session")
def digits_shards(tmp_path_factory) -> Path:
    """The real digits dataset, split and sharded as the pipeline does it (small shards)."""
    root = tmp_path_factory.mktemp("digits")
    cfg = images.Config(samples_per_shard=64)
    images.preprocess(cfg, root / "raw", root / "shards", images.ingest(cfg, root / "raw"))
    return root / "shards"


DIGITS_STATS = {"input_shape": [1, 8, 8], "num_classes": 10}  # what bind reads of the digits' stats.json


def bound(model_cfg, stats: dict = DIGITS_STATS):
    """An image family's model config with its sizes and classes taken from ``stats`` (digits)."""
    from components.models.common import bind_images

    return bind_images(model_cfg, stats)


def numbered_shards(directory: Path, n: int, per_shard: int, split: str = "train") -> Path:
    """Shards whose sample i has input filled with i, so a reader's output names its samples."""
    inputs = np.arange(n, dtype=np.float32)[:, None, None, None] * np.ones((1, 1, 2, 2), np.float32)
    targets = np.arange(n) % 10
    columns = {"input.npy": inputs, "target.cls": targets}
    splits = {s: columns for s in ("train", "val", "test")} if split == "all" else {split: columns}
    write_shards(directory, splits, per_shard, {"dataset": "numbered"})
    return directory


def text_shards(directory: Path, n: int, per_shard: int, seed: int = 0) -> Path:
    """Sentence-pair shards (train and val) whose sample i has source ids all i + 1 (0 is padding)
    of a random length 1..60 and a target of about that length, each shard recording its tokens."""
    from components.data.writer import SplitWriter, write_stats

    rng = np.random.default_rng(seed)
    shards = {}
    for split in ("train", "val"):
        writer = SplitWriter(directory, split, n, per_shard, compress=True)
        for i in range(n):
            src_len = int(rng.integers(1, 61))
            tgt_len = max(1, src_len + int(rng.integers(-5, 6)))
            src, tgt = np.full(src_len, i + 1, np.int32), rng.integers(1, 100, tgt_len).astype(np.int32)
            writer.write({"__key__": f"{split}{i:07d}", "src.npy": src, "tgt.npy": tgt}, tokens=src_len + tgt_len)
        shards[split] = writer.close()
    write_stats(directory, shards, {"dataset": "translation"}, fields=("src.npy", "tgt.npy"))
    return directory


class Recorder:
    """A training-loop hook that keeps every step row and every (epoch metrics, checkpoint dir)."""

    all_ranks = False

    def __init__(self):
        self.rows, self.epochs = [], []

    def on_step(self, rows):
        self.rows += rows

    def on_epoch(self, metrics, checkpoint_dir):
        self.epochs.append((metrics, checkpoint_dir))


def dataset_shards(params: dict, name: str, root: Path) -> Path:
    """``data.<name>`` of ``params`` ingested and sharded as the pipeline does it; returns the shard dir."""
    from components.params import dataset_config, dataset_module

    cfg, module = dataset_config(params, name), dataset_module(params, name)
    manifest = module.ingest(cfg, root / "raw")
    module.preprocess(cfg, root / "raw", root / "shards", manifest)
    return root / "shards"


# gnn_hetero is not among them: torch-geometric's HeteroConv takes a dict of per-type tensors, which the
# model cuts from the batch with boolean masks, a read of the device per step (see the note in gnn.py).
ALGOS = ["resnet", "transformer", "gan", "vae", "diffusion", "gnn", "gnn_graphs", "gnn_karate", "clip"]


def first_steps(params: dict, algo: str, shards: Path, device, n: int = 5):
    """``algo``'s training step as the loop builds it (bf16 autocast on CUDA, fp32 elsewhere), its
    meter, and ``n`` batches moved and laid out as the loop moves them (a small graph's single
    batch repeats). The first step has run: the optimizer's state exists."""
    import torch

    from components.data.registry import open_split
    from components.data.shards import read_stats
    from components.models import get_family
    from components.params import family_name, train_config
    from components.training.loop import _autocast, _channels_last, _to
    from components.training.meter import StepMeter
    from components.training.steps import SupervisedStep

    device = torch.device(device)
    cfg = train_config(params, algo)
    family = get_family(family_name(params, algo))
    cfg.model = family.bind(cfg.model, read_stats(shards), shards)
    ds = open_split(shards, "train", batch_size=cfg.batch_size, uint8_images=True)
    batches = []
    for batch in ds:
        batch = ds.batcher.on_device(_to(batch, device))
        batches.append(_channels_last(batch) if cfg.channels_last else batch)
        if len(batches) == n:
            break
    batches = (batches * n)[:n]
    torch.manual_seed(0)
    model = family.build(cfg.model).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    precision = "bf16" if device.type == "cuda" else "fp32"
    step = getattr(family, "Step", SupervisedStep)(model, cfg, family, 10, lambda: _autocast(precision, device))
    step(batches[0], 0)
    return step, StepMeter(device, algo, ""), batches


def graph_dataset(root: Path, **kw):
    """A graph dataset ingested and sharded as the pipeline does it; returns the shard dir."""
    from components.data import graphs

    cfg = graphs.Config(**kw)
    manifest = graphs.ingest(cfg, root / "raw")
    graphs.preprocess(cfg, root / "raw", root / "shards", manifest)
    return root / "shards"


@pytest.fixture(scope="session")
def community_shards(tmp_path_factory) -> Path:
    """A 600-node, 4-community stochastic block model; seed nodes in shards of 40."""
    from components.data.graphs import SBMConfig

    return graph_dataset(tmp_path_factory.mktemp("community"), source="sbm", samples_per_shard=40,
                         sbm=SBMConfig(num_nodes=600, communities=4, feature_dim=8))


@pytest.fixture(scope="session")
def typed_shards(tmp_path_factory) -> Path:
    """A typed graph of 600 papers (4 fields), 300 authors and 20 venues; paper seeds in shards of 60."""
    from components.data.graphs import TypedConfig

    return graph_dataset(tmp_path_factory.mktemp("typed"), source="typed", samples_per_shard=60,
                         typed=TypedConfig(papers=600, authors=300, venues=20, fields=4, feature_dim=8))


@pytest.fixture(scope="session")
def families_shards(tmp_path_factory) -> Path:
    """40 small graphs per random-graph family, 25 graphs per shard."""
    from components.data.graphs import FamiliesConfig

    return graph_dataset(tmp_path_factory.mktemp("families"), source="families", samples_per_shard=25,
                         families=FamiliesConfig(graphs_per_family=40, min_nodes=12, max_nodes=20))


def stage_command(module: str, *args: str) -> list[str]:
    """``module`` (``pipelines.train``...) run as dvc.yaml runs a stage: through the stage client,
    forked from a warm stage server (pipelines/stage.py), so a test that runs many stages pays the
    imports of torch, MLflow and Ray once. A stage started with other import-time variables
    (``PYTHONPATH``, ``MLFLOW_*``...) gets a server of its own: run a one-off such stage directly."""
    return [sys.executable, "-m", "pipelines.stage", module, *args]


def free_port() -> int:
    """A port nothing listens on now (bound, then released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def shared_ray(num_cpus: int = 2):
    """A local Ray head that stage processes join through ``RAY_ADDRESS`` (yielded), instead of each
    starting and stopping a Ray of its own: what a user's long-lived `ray start --head` gives them.

    Started from this process without connecting to it (no driver, so no Ray signal handlers in
    pytest), with its own dashboard and agent ports (beside any other Ray on the machine), and the
    settings a stage's local Ray has (``launch.init_ray``), which the head's workers inherit.
    """
    from ray.cluster_utils import Cluster

    settings = {"RAY_AUTH_MODE": "disabled", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1",
                "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("MLFLOW_") or k == "RAY_ADDRESS"}
    before = {k: os.environ.get(k) for k in settings}
    os.environ.update(settings)
    try:
        cluster = Cluster(initialize_head=True, connect=False, head_node_args={
            "num_cpus": num_cpus, "include_dashboard": True, "dashboard_port": free_port(),
            "dashboard_agent_listen_port": free_port()})
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        os.environ.update(saved)
    try:
        yield cluster.address
    finally:
        cluster.shutdown()


def copy_project(root: Path, params: dict, with_dvc: bool = False) -> Path:
    """The project's code (and its pipeline files, .gitignore) under ``root`` with ``params`` as params.yaml."""
    import shutil

    for name in ("components", "pipelines"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    if with_dvc:  # the DAG of these params, written by the code that writes the repository's own
        from pipelines import dag

        shutil.copy(REPO / ".gitignore", root / ".gitignore")
        dag.write(params, root)
    return root


# The longest test files first (seconds on a 2-core CI machine, 2026-12-06): with the suite split
# over workers file by file (pyproject's addopts), a long file started last would run alone at the
# end. Files not named keep their collection order, after these.
LONGEST_FIRST = ("pipelines/test_e2e.py", "pipelines/test_edges.py", "pipelines/test_faults.py",
                 "pipelines/test_dag.py", "pipelines/test_tune.py", "pipelines/test_cluster.py",
                 "benchmarks/test_bench_gpu.py", "pipelines/test_cifar_repro.py",
                 "components/training/test_speed_options.py", "pipelines/test_tracking_server.py",
                 "components/data/test_shards_ray.py")


def pytest_collection_modifyitems(config, items):
    def rank(item) -> int:
        path = item.nodeid.split("::", 1)[0].removeprefix("tests/")
        return LONGEST_FIRST.index(path) if path in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: within a file, and among the files not named, the order stays


def pytest_xdist_auto_num_workers(config) -> int:
    """``-n auto``: two workers where there are two cores or more. Each test file may start a local
    Ray, a stage server and DDP workers of its own; two workers keep 2 cores busy (one alone leaves
    a third of them idle, in imports and start-ups) without running several Rays at once on a
    larger machine's memory."""
    return min(2, os.cpu_count() or 1)
