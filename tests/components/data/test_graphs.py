"""Graph data: generated and real sources, seed-node and graph shards, full-graph and
neighbour-sampled batches, and the multi-worker split of seed nodes."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from components.config import ConfigError, parse
from components.data import graphs
from components.data.manifest import DataError
from components.data.registry import open_split
from components.data.shards import read_stats
from tests.conftest import graph_dataset


def test_sbm_is_undirected_seeded_and_as_homophilous_as_its_degrees_say():
    cfg = graphs.SBMConfig(num_nodes=1200, communities=4, degree_in=8.0, degree_out=4.0, feature_dim=6)
    x, ei, y = graphs.stochastic_block_model(cfg, seed=3)
    x2, ei2, _ = graphs.stochastic_block_model(cfg, seed=3)
    assert np.array_equal(ei, ei2) and np.array_equal(x, x2)
    assert not np.array_equal(ei, graphs.stochastic_block_model(cfg, seed=4)[1])
    pairs = set(map(tuple, ei.T.tolist()))
    assert all((d, s) in pairs for s, d in pairs) and all(s != d for s, d in pairs)  # symmetric, no loops
    assert len(pairs) == ei.shape[1]  # no duplicates
    assert np.bincount(y).tolist() == [300] * 4 and x.shape == (1200, 6)
    assert abs(ei.shape[1] / 1200 - 12.0) < 1.0  # mean degree = degree_in + degree_out
    assert abs(graphs.homophily(ei, y) - 8 / 12) < 0.03


def test_graph_families_have_matched_degree_and_are_labelled_by_family():
    graph_list = graphs.random_graph_families(graphs.FamiliesConfig(graphs_per_family=10, min_nodes=20,
                                                                    max_nodes=30), seed=0)
    labels = np.array([g[2] for g in graph_list])
    assert np.bincount(labels).tolist() == [10] * len(graphs.FAMILIES)
    for x, ei, _ in graph_list:
        assert x.shape[1] == 1 and 20 <= len(x) <= 30 and ei.max() < len(x)
    degree = [np.mean([g[1].shape[1] / len(g[0]) for g in graph_list if g[2] == f]) for f in range(5)]
    assert all(2.5 < d < 5.0 for d in degree), degree  # structure, not density, tells them apart


def test_node_shards_hold_seed_nodes_and_the_graph_asset(community_shards):
    stats = read_stats(community_shards)
    assert stats["task"] == "node" and stats["num_features"] == 8 and stats["num_classes"] == 4
    assert stats["fields"] == ["node.cls", "target.cls"]
    assert sum(s["samples"] for s in stats["splits"].values()) == 600
    x, ei, index, target = next(iter(open_split(community_shards, "test", batch_size=10_000)))
    graph = np.load(community_shards / graphs.GRAPH)
    assert x.shape == (600, 8) and ei.shape[1] == stats["num_edges"]  # full graph on one worker
    assert torch.equal(target, torch.from_numpy(graph["y"])[index])
    seen = [set(b[2].tolist()) for s in ("train", "val", "test") for b in open_split(community_shards, s, batch_size=10_000)]
    assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2]) and len(set.union(*seen)) == 600


def test_a_corrupt_graph_asset_is_named(tmp_path, community_shards):
    import shutil

    copy = tmp_path / "shards"
    shutil.copytree(community_shards, copy)
    (copy / graphs.GRAPH).write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"graph.npz: sha256 differs.*dvc repro --force preprocess"):
        open_split(copy, "train", batch_size=8)


def csr(edge_index: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    order = torch.argsort(edge_index[1] * n + edge_index[0])
    ei = edge_index[:, order]
    return torch.cat([torch.zeros(1, dtype=torch.long), torch.bincount(ei[1], minlength=n).cumsum(0)]), ei[0]


def test_neighbour_sampling_keeps_seeds_first_real_edges_and_the_fanout():
    x, ei, _ = graphs.stochastic_block_model(graphs.SBMConfig(num_nodes=300, communities=3, feature_dim=2), 0)
    ei = torch.from_numpy(ei)
    rowptr, sources = csr(ei, 300)
    seeds = torch.tensor([5, 17, 250, 99])
    n_id, sub = graphs.sample_neighbors(rowptr, sources, seeds, [3, 2], torch.Generator().manual_seed(0))
    assert torch.equal(n_id[:4], seeds) and len(torch.unique(n_id)) == len(n_id)
    real = set(map(tuple, ei.T.tolist()))
    assert all((int(n_id[s]), int(n_id[d])) in real for s, d in sub.T.tolist())
    in_degree = torch.bincount(sub[1], minlength=len(n_id))
    assert int(in_degree[:4].max()) <= 3 and int(in_degree.max()) <= 3
    again, sub2 = graphs.sample_neighbors(rowptr, sources, seeds, [3, 2], torch.Generator().manual_seed(0))
    assert torch.equal(again, n_id) and torch.equal(sub2, sub)
    _, other = graphs.sample_neighbors(rowptr, sources, seeds, [3, 2], torch.Generator().manual_seed(1))
    assert not torch.equal(other, sub)
    # fanout -1 takes every neighbour: the seeds' in-degree in the subgraph is their full degree.
    n_all, sub_all = graphs.sample_neighbors(rowptr, sources, seeds, [-1], None)
    assert torch.equal(torch.bincount(sub_all[1], minlength=len(n_all))[:4], torch.bincount(ei[1], minlength=300)[seeds])


def test_full_fanout_neighbourhood_gives_the_full_graph_output_at_the_seeds():
    """GraphSAGE's mean needs no global degrees: on the seeds' whole 2-hop computation graph it
    computes exactly what it computes on the full graph."""
    from components.models import gnn

    x, ei, _ = graphs.stochastic_block_model(graphs.SBMConfig(num_nodes=300, communities=3, feature_dim=4), 0)
    x, ei = torch.from_numpy(x), torch.from_numpy(ei)
    torch.manual_seed(0)
    model = gnn.build(gnn.Config(conv="sage", in_channels=4, num_classes=3, hidden=8, layers=2)).eval()
    seeds = torch.tensor([3, 150, 7, 299])
    n_id, sub = graphs.sample_neighbors(*csr(ei, 300), seeds, [-1, -1])
    assert torch.allclose(model(x[n_id], sub)[:4], model(x, ei)[seeds], atol=1e-5)


def test_two_workers_sample_each_train_seed_once_per_epoch(community_shards):
    stats = read_stats(community_shards)
    for epoch in (0, 1):
        seeds, counts = [], []
        for rank in (0, 1):
            ds = open_split(community_shards, "train", rank=rank, world_size=2, shuffle=True, seed=0,
                              batch_size=64, fanout=[5, 5])
            ds.set_epoch(epoch)
            batches = list(ds)
            counts.append(len(batches))
            for x, ei, index, target in batches:
                assert torch.equal(index, torch.arange(len(target)))  # seeds first in every subgraph
                assert ei.max() < len(x) and len(x) < stats["num_nodes"]  # a sampled neighbourhood, not the graph
                seeds.extend(x[:len(target)].sum(1).tolist())  # features identify the seed nodes
        assert counts[0] == counts[1]  # equal step counts: DDP never waits on a finished rank
        graph = np.load(community_shards / graphs.GRAPH)
        train = [int(s) for s in open_split(community_shards, "train", batch_size=10_000).__iter__().__next__()[2]]
        expected = sorted(graph["x"][train].sum(1).astype(np.float32).tolist())
        assert np.allclose(sorted(seeds), expected, atol=1e-4)  # every train seed exactly once, no other


def test_graph_batches_are_disjoint_unions(families_shards):
    stats = read_stats(families_shards)
    assert stats["task"] == "graph" and stats["num_classes"] == len(graphs.FAMILIES)
    x, ei, index, target = next(iter(open_split(families_shards, "train", batch_size=7)))
    assert len(target) == 7 and torch.equal(torch.unique(index), torch.arange(7)) and len(index) == len(x)
    assert torch.equal(index[ei[0]], index[ei[1]])  # no edge crosses graphs


def test_karate_club_is_read_from_torch_geometric(tmp_path):
    shards = graph_dataset(tmp_path, source="karate", samples_per_shard=8, test_fraction=0.3)
    stats = read_stats(shards)
    assert stats["num_nodes"] == 34 and stats["num_classes"] == 4 and stats["num_edges"] == 156
    assert sum(s["samples"] for s in stats["splits"].values()) == 34


def write_planetoid(root, name: str = "tiny", n: int = 530, n_train: int = 10, n_test: int = 12, f: int = 6):
    """Planetoid's format: pickled scipy matrices, one-hot labels, an adjacency dict, test ids."""
    import scipy.sparse as sp

    raw = root / name / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    feats = (rng.random((n, f)) < 0.3).astype(np.float32)
    labels = np.eye(3)[rng.integers(0, 3, n)]
    test_ids = np.arange(n - n_test, n)
    parts = {"x": sp.csr_matrix(feats[:n_train]), "allx": sp.csr_matrix(feats[:n - n_test]),
             "tx": sp.csr_matrix(feats[n - n_test:]), "y": labels[:n_train], "ally": labels[:n - n_test],
             "ty": labels[n - n_test:], "graph": {i: [(i + 1) % n, (i + 7) % n] for i in range(n)}}
    for key, value in parts.items():
        with open(raw / f"ind.{name}.{key}", "wb") as fh:
            pickle.dump(value, fh)
    (raw / f"ind.{name}.test.index").write_text("\n".join(map(str, test_ids)) + "\n")
    return feats, labels.argmax(1)


def test_planetoid_files_load_with_their_public_split(tmp_path):
    feats, labels = write_planetoid(tmp_path / "planetoid")
    shards = graph_dataset(tmp_path / "data", source="planetoid", name="tiny", path=str(tmp_path / "planetoid"),
                           split="public", samples_per_shard=500)
    stats = read_stats(shards)
    assert stats["num_nodes"] == 530 and stats["num_features"] == 6 and stats["num_classes"] == 3
    assert {k: v["samples"] for k, v in stats["splits"].items()} == {"train": 10, "val": 500, "test": 12}
    graph = np.load(shards / graphs.GRAPH)
    assert np.array_equal(graph["x"], feats) and np.array_equal(graph["y"], labels)
    assert graph["edge_index"].shape[1] == 4 * 530  # i±1 and i±7, both directions


def test_missing_real_data_says_where_to_put_it(tmp_path):
    with pytest.raises(DataError, match=r"planetoid Cora: 8 raw file\(s\) missing.*ind.cora.x.*Nothing is downloaded"):
        graphs.ingest(graphs.Config(source="planetoid", name="Cora", path=str(tmp_path)), tmp_path / "raw")
    with pytest.raises(DataError, match=r"TUDataset MUTAG.*MUTAG.zip"):
        graphs.ingest(graphs.Config(source="tu", name="MUTAG", path=str(tmp_path)), tmp_path / "raw")


def test_tu_files_load_as_graph_classification(tmp_path):
    raw = tmp_path / "tu" / "TINY" / "raw"
    raw.mkdir(parents=True)
    # 6 graphs: triangles (label 1) and 3-paths (label -1), 1-based node ids.
    edges, indicator, glabels, node = [], [], [], 1
    for g in range(6):
        a, b, c = node, node + 1, node + 2
        pairs = [(a, b), (b, c), (c, a)] if g % 2 == 0 else [(a, b), (b, c)]
        edges += [p for e in pairs for p in (e, e[::-1])]
        indicator += [g + 1] * 3
        glabels.append(1 if g % 2 == 0 else -1)
        node += 3
    (raw / "TINY_A.txt").write_text("\n".join(f"{s}, {d}" for s, d in edges) + "\n")
    (raw / "TINY_graph_indicator.txt").write_text("\n".join(map(str, indicator)) + "\n")
    (raw / "TINY_graph_labels.txt").write_text("\n".join(map(str, glabels)) + "\n")
    shards = graph_dataset(tmp_path / "data", source="tu", name="TINY", path=str(tmp_path / "tu"),
                           val_fraction=0.34, test_fraction=0.34, samples_per_shard=2)
    stats = read_stats(shards)
    assert stats["num_graphs"] == 6 and stats["num_classes"] == 2 and stats["num_features"] == 1
    x, ei, index, target = next(iter(open_split(shards, "train", batch_size=10)))
    for g in range(len(target)):
        edges_in_g = int((index[ei[0]] == g).sum())
        assert edges_in_g == (6 if target[g] == 1 else 4)  # triangle <-> label 1 (labels remapped -1,1 -> 0,1)


def test_config_errors_name_the_fix():
    with pytest.raises(ConfigError, match="needs name .*and path"):
        parse(graphs.Config, {"source": "planetoid"}, "data.cora")
    with pytest.raises(ConfigError, match="split: public needs"):
        parse(graphs.Config, {"source": "sbm", "split": "public"}, "data.community")
    with pytest.raises(ConfigError, match="max_nodes: must be >= min_nodes"):
        parse(graphs.Config, {"source": "families", "families": {"min_nodes": 30, "max_nodes": 20}}, "data.g")


@pytest.mark.parametrize("bad, message", [
    (np.zeros((5, 2), np.int64), r"shape \(2, num_edges\), got \(5, 2\) \(transpose it"),
    (np.array([[0, 1], [1, 9]]), r"ids must be in \[0, 4\).*0\.\.9"),
    (np.array([[0, -1], [1, 2]]), r"ids must be in \[0, 4\)"),
    (np.array([[0.5, 1.0], [1.0, 2.0]]), "must be integers"),
    (np.zeros((2, 3, 1)), r"shape \(2, num_edges\)"),
])
def test_malformed_edge_index_gets_a_clear_error(bad, message):
    with pytest.raises(ValueError, match=message):
        graphs.check_edge_index(bad, 4)


def test_whole_graphs_batch_as_torch_geometrics_batch_does():
    # collate_graphs builds the batch directly (about 5x faster than PyG's Batch.from_data_list
    # on 16 small graphs, which makes a Data object per graph); the result must be PyG's.
    from torch_geometric.data import Batch, Data

    rng = np.random.default_rng(0)
    samples = []
    for _ in range(6):
        n = int(rng.integers(3, 9))
        samples.append((rng.standard_normal((n, 2)).astype(np.float32), rng.integers(0, n, (2, 7)), int(rng.integers(5))))
    x, edge_index, index, target = graphs.collate_graphs(samples)
    ref = Batch.from_data_list([Data(x=torch.as_tensor(s[0]), edge_index=torch.as_tensor(s[1]).long()) for s in samples])
    assert torch.equal(x, ref.x) and torch.equal(edge_index, ref.edge_index) and torch.equal(index, ref.batch)
    assert target.tolist() == [s[2] for s in samples]
