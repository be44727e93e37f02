"""The shard reader under a real 2-worker Ray Train job (DDP process group, ranks from Ray)."""

import json
import os
from collections import Counter
from pathlib import Path

import pytest
import torch

from components.data.registry import open_split
from tests.conftest import REPO, numbered_shards


def record_epoch_loop(config):
    import ray.train

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    ds = open_split(config["shards"], "train", rank=rank, world_size=world, shuffle=True, seed=1, batch_size=16)
    out = {}
    for epoch in range(2):
        ds.set_epoch(epoch)
        loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=config["loader_workers"])
        out[epoch] = [x[:, 0, 0, 0].long().tolist() for x, _ in loader]
    with open(f"{config['out']}/rank{rank}.json", "w") as f:
        json.dump({"world": world, "epochs": out}, f)
    ray.train.report({"done": 1})


@pytest.mark.e2e
def test_two_ray_workers_visit_every_sample_once_per_epoch(tmp_path):
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    n = 157
    shards = numbered_shards(tmp_path / "shards", n, 20)
    # Workers import this test module by name, so they need the repository on their path: a Ray
    # of this test's own (an earlier test in this process may have left one running).
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, configure_logging=False, runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([str(REPO), str(Path(__file__).parent)])}})
    try:
        TorchTrainer(record_epoch_loop,
                     train_loop_config={"shards": str(shards), "out": str(tmp_path), "loader_workers": 1},
                     scaling_config=ray.train.ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
                     run_config=ray.train.RunConfig(storage_path=str(tmp_path / "ray"), name="epoch")).fit()
    finally:
        ray.shutdown()
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    for epoch in ("0", "1"):
        batches = [r["epochs"][epoch] for r in ranks]
        assert len(batches[0]) == len(batches[1])  # equal step counts: no DDP hang
        seen = Counter(i for rank in batches for b in rank for i in b)
        assert sorted(seen) == list(range(n)) and set(seen.values()) == {1}
