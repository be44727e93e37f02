"""GNN: every architecture on a tiny graph, equivariance to node order, the eq. 7 update of
GraphSAGE, and invariance of the graph-level readout."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from components.config import ConfigError, parse
from components.models import gnn


def tiny_graph(n: int = 7, f: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, f, generator=g)
    src = torch.tensor([0, 1, 2, 3, 4, 5, 0, 2])
    dst = torch.tensor([1, 2, 3, 4, 5, 6, 3, 6])
    return x, torch.cat([torch.stack([src, dst]), torch.stack([dst, src])], 1)  # undirected


def cfg_of(**kw) -> gnn.Config:
    return gnn.Config(**{"in_channels": 5, "num_classes": 3, "hidden": 8, "heads": 2, **kw})


ARCHS = ["gcn", "sage", "gat", "gin"]
NORMS = ["none", "batch", "layer", "graph"]


@pytest.mark.parametrize("conv", ARCHS)
@pytest.mark.parametrize("norm", NORMS)
def test_each_architecture_classifies_nodes_and_backpropagates(conv, norm):
    torch.manual_seed(0)
    model = gnn.build(cfg_of(conv=conv, norm=norm, layers=3, residual=True, drop_edge=0.2))
    x, ei = tiny_graph()
    out = model(x, ei)
    assert out.shape == (7, 3)
    out.sum().backward()
    assert all(p.grad is not None for p in model.convs[0].parameters() if p.requires_grad)


@pytest.mark.parametrize("conv", ARCHS)
def test_permuting_the_nodes_permutes_the_outputs(conv):
    torch.manual_seed(0)
    model = gnn.build(cfg_of(conv=conv, norm="layer", layers=2)).eval()
    x, ei = tiny_graph()
    perm = torch.randperm(7, generator=torch.Generator().manual_seed(1))
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(7)
    out = model(x, ei)
    out_p = model(x[perm], inverse[ei])  # node i of the permuted graph is node perm[i]
    assert torch.allclose(out_p, out[perm], atol=1e-5)


@pytest.mark.parametrize("readout", ["mean", "sum", "attention"])
def test_graph_readout_is_invariant_to_node_order_and_batches_graphs(readout):
    torch.manual_seed(0)
    model = gnn.build(cfg_of(conv="gin", task="graph", readout=readout, norm="graph")).eval()
    x, ei = tiny_graph()
    perm = torch.randperm(7, generator=torch.Generator().manual_seed(2))
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(7)
    one = model(x, ei)
    assert one.shape == (1, 3)
    assert torch.allclose(model(x[perm], inverse[ei]), one, atol=1e-5)
    # two copies in one batch: the second graph's nodes are offset by 7
    xb, eb = torch.cat([x, x]), torch.cat([ei, ei + 7], 1)
    batch = torch.cat([torch.zeros(7, dtype=torch.long), torch.ones(7, dtype=torch.long)])
    two = model(xb, eb, batch)
    assert two.shape == (2, 3) and torch.allclose(two[0], two[1], atol=1e-5)


def test_graphsage_is_w_times_the_neighbour_mean_plus_b_times_self():
    conv = gnn._conv("sage", 5, 4, heads=1)
    x, ei = tiny_graph()
    out = conv(x, ei)
    v = 3
    neighbours = ei[0][ei[1] == v]
    want = conv.lin_l(x[neighbours].mean(0)) + conv.lin_r(x[v])
    assert torch.allclose(out[v], want, atol=1e-6)


def test_config_checks():
    with pytest.raises(ConfigError, match="divisible"):
        parse(gnn.Config, {"conv": "gat", "hidden": 10, "heads": 4}, "train.gnn.model")
    with pytest.raises(ConfigError, match="bind"):
        gnn.build(gnn.Config())


# ---------------------------------------------------------------------------- the family contract

def train_cfg(model: gnn.Config, epochs: int, **kw) -> dict:
    from components.config import OptimizerConfig, ScheduleConfig, TrainConfig, to_dict

    cfg = TrainConfig(lr=0.01, epochs=epochs, batch_size=kw.pop("batch_size", 4096), log_every=5,
                      optimizer=OptimizerConfig(name="adamw", weight_decay=5e-4),
                      schedule=ScheduleConfig(name="cosine", warmup=0.05), **kw)
    cfg.model = model
    return to_dict(cfg)


def test_bind_takes_counts_from_the_data_and_refuses_the_wrong_task(community_shards, digits_shards):
    from components.data.shards import read_stats

    stats = read_stats(community_shards)
    cfg = gnn.bind(gnn.Config(), stats, community_shards)
    assert (cfg.in_channels, cfg.num_classes) == (8, 4)
    with pytest.raises(ConfigError, match="node classification.*set model.task: node"):
        gnn.bind(gnn.Config(task="graph"), stats, community_shards)
    with pytest.raises(ConfigError, match="num_classes: the data has 4, the model 7"):
        gnn.bind(gnn.Config(num_classes=7), stats, community_shards)
    with pytest.raises(ConfigError, match="not a graph dataset"):
        gnn.bind(gnn.Config(), read_stats(digits_shards), digits_shards)


def test_a_bind_error_names_the_algorithms_section_not_the_familys(families_shards, tmp_path):
    from components.training.loop import train_loop_per_worker

    cfg = train_cfg(gnn.Config(task="graph", num_classes=7), 1)  # gnn_graphs: an algorithm of family gnn
    with pytest.raises(ConfigError, match=r"^train\.gnn_graphs\.model: num_classes: the data has 5, the model 7"):
        train_loop_per_worker({"algo": "gnn_graphs", "family": "gnn", "train": cfg, "data_dir": str(families_shards),
                               "run_dir": str(tmp_path)})


def test_full_batch_on_one_worker_and_sampled_batches_on_several():
    assert gnn.loader_options(gnn.Config(), 1) == {}
    assert gnn.loader_options(gnn.Config(fanout=[4, 3]), 2) == {"fanout": [4, 3]}
    assert gnn.loader_options(gnn.Config(sampling="neighbor"), 1) == {"fanout": [10, 10]}
    assert gnn.loader_options(gnn.Config(sampling="full"), 4) == {}
    assert gnn.loader_options(gnn.Config(task="graph"), 4) == {}
    with pytest.raises(ConfigError, match="fanout: one entry per layer, so 3"):
        parse(gnn.Config, {"layers": 3, "fanout": [5, 5]}, "train.gnn.model")


@pytest.mark.parametrize("sampling", ["full", "neighbor"])
def test_training_classifies_the_community_graph(community_shards, tmp_path, sampling):
    from components.training.loop import train_loop_per_worker

    model = gnn.Config(conv="sage", sampling=sampling, fanout=[8, 8])
    metrics = train_loop_per_worker({"algo": "gnn", "train": train_cfg(model, 100, batch_size=128 if sampling ==
                                     "neighbor" else 4096), "data_dir": str(community_shards), "run_dir": str(tmp_path)})
    assert metrics["val_accuracy"] > 0.85  # features alone: ~45%; the graph lifts it (4 communities)
    assert metrics["samples_per_s"] > 0


def test_training_tells_graph_families_apart_by_structure(families_shards, tmp_path):
    from components.training.loop import train_loop_per_worker

    model = gnn.Config(conv="gin", task="graph", layers=3, norm="batch", residual=True, readout="sum", dropout=0.0)
    cfg = train_cfg(model, 15, batch_size=16)
    metrics = train_loop_per_worker({"algo": "gnn_graphs", "family": "gnn", "train": cfg,
                                     "data_dir": str(families_shards), "run_dir": str(tmp_path)})
    assert metrics["val_accuracy"] > 0.5  # 5 families, constant features: chance is 0.2


def test_evaluate_reports_accuracy_macro_f1_and_embeddings(community_shards, families_shards, tmp_path):
    from components.data.shards import read_stats

    for shards, cfg in ((community_shards, gnn.Config(hidden=16)),
                        (families_shards, gnn.Config(conv="gin", task="graph", hidden=16, readout="sum"))):
        cfg = gnn.bind(cfg, read_stats(shards), shards)
        torch.manual_seed(0)
        model = gnn.build(cfg)
        result = gnn.evaluate(model, cfg, shards, "test")
        n = read_stats(shards)["splits"]["test"]["samples"]
        assert result["num_samples"] == n and result["embeddings"].shape == (n, 16)
        cm = np.array(result["confusion_matrix"])  # F1 per class: 2 TP / (2 TP + FP + FN)
        assert result["macro_f1"] == pytest.approx(np.mean(2 * cm.diagonal() / np.maximum(cm.sum(0) + cm.sum(1), 1)))
        report = gnn.report(result, "t", cfg.task, "plots/eval/gnn")
        text = report.markdown
        assert "macro-F1" in text and f"plots/eval/gnn/{{confusion,embeddings}}_{cfg.task}.png" in text
        assert sorted(report.figures) == [f"confusion_{cfg.task}.png", f"embeddings_{cfg.task}.png"]
        assert ("homophily" in text) == (cfg.task == "node")


def test_predict_gives_probabilities_per_node_or_graph_and_rejects_malformed_input():
    torch.manual_seed(0)
    cfg = cfg_of(conv="gcn")
    model = gnn.build(cfg)
    x, ei = tiny_graph()
    probs = gnn.predict(model, {"x": x.numpy(), "edge_index": ei.numpy()}, cfg)
    assert probs.shape == (7, 3) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert np.allclose(probs, torch.softmax(model.eval()(x, ei), 1).detach().numpy(), atol=1e-6)
    with pytest.raises(ValueError, match=r"transpose it"):
        gnn.predict(model, {"x": x.numpy(), "edge_index": ei.T.numpy()}, cfg)
    with pytest.raises(ValueError, match=r"ids must be in \[0, 7\)"):
        gnn.predict(model, {"x": x.numpy(), "edge_index": ei.numpy() + 3}, cfg)
    with pytest.raises(ValueError, match=r"x: expected node features of shape \(num_nodes, 5\)"):
        gnn.predict(model, {"x": x.numpy()[:, :4], "edge_index": ei.numpy()}, cfg)
    with pytest.raises(ValueError, match="missing input 'edge_index'"):
        gnn.predict(model, {"x": x.numpy()}, cfg)
    with pytest.raises(TypeError, match="expected a dict"):
        gnn.predict(model, x.numpy(), cfg)
    gcfg = cfg_of(conv="gin", task="graph", readout="sum")
    gmodel = gnn.build(gcfg)
    two = {"x": np.concatenate([x.numpy()] * 2), "edge_index": np.concatenate([ei.numpy(), ei.numpy() + 7], 1),
           "batch": np.repeat([0, 1], 7)}
    out = gnn.predict(gmodel, two, gcfg)
    assert out.shape == (2, 3) and np.allclose(out[0], out[1], atol=1e-5)
    with pytest.raises(ValueError, match="batch: expected each node's graph id"):
        gnn.predict(gmodel, {**two, "batch": np.repeat([0, 2], 7)}, gcfg)
    example = gnn.serving_example(gcfg)
    assert gnn.predict(gmodel, example, gcfg).shape == (2, 3)


# ---------------------------------------------------------------------------- typed graphs

def test_a_typed_graph_keeps_its_types_through_shards_and_sampled_batches(typed_shards):
    """Papers first and only papers labelled; every edge joins the types its relation names; a
    sampled batch carries the types of the nodes and edges it drew, over every relation."""
    from components.data import graphs
    from components.data.registry import open_split
    from components.data.shards import read_stats

    stats = read_stats(typed_shards)
    assert stats["node_types"] == list(graphs.NODE_TYPES) and len(stats["edge_types"]) == len(graphs.EDGE_TYPES)
    g = graphs.load_graph(str(typed_shards / stats["graph"]["file"]), stats["graph"]["sha256"])
    ends = torch.tensor([[stats["node_types"].index(s), stats["node_types"].index(d)] for s, _, d in stats["edge_types"]])
    assert torch.equal(g["node_type"][g["edge_index"]].T, ends[g["edge_type"]])
    assert (g["y"][g["node_type"] == 0] >= 0).all() and (g["y"][g["node_type"] > 0] == -1).all()
    seen = set()
    batches = open_split(typed_shards, "train", batch_size=32, fanout=[5, 5], seed=0)
    for x, edge_index, index, target, node_type, edge_type in batches:
        assert len(node_type) == len(x) and len(edge_type) == edge_index.shape[1]
        assert torch.equal(node_type[edge_index].T, ends[edge_type])  # the relation of each sampled edge
        assert (node_type[index] == 0).all()  # the seeds are papers
        seen |= set(edge_type.tolist())
    assert seen == set(range(len(stats["edge_types"])))


def test_relation_wise_layers_see_what_a_type_blind_network_cannot(typed_shards, tmp_path):
    """On the typed graph, where a paper's field shows in its authors and venue and its citations
    are random, the relation-wise network beats the same network run type-blind."""
    from components.training.loop import train_loop_per_worker

    acc = {}
    for hetero in (False, True):
        model = gnn.Config(conv="sage", hidden=32, hetero=hetero, dropout=0.3)
        acc[hetero] = train_loop_per_worker({"algo": "gnn", "train": train_cfg(model, 60, batch_size=4096),
                                             "data_dir": str(typed_shards),
                                             "run_dir": str(tmp_path / str(hetero))})["val_accuracy"]
    assert acc[True] > acc[False] + 0.05, acc


def test_a_relation_wise_model_predicts_its_papers_and_names_bad_types(typed_shards):
    from components.data.shards import read_stats

    cfg = gnn.bind(gnn.Config(conv="sage", hidden=8, hetero=True), read_stats(typed_shards), typed_shards)
    model = gnn.build(cfg)
    example = gnn.serving_example(cfg)
    probs = gnn.predict(model, example, cfg)
    assert probs.shape == ((example["node_type"] == 0).sum(), cfg.num_classes)
    np.testing.assert_allclose(probs.sum(1), 1, rtol=1e-5)
    with pytest.raises(ValueError, match="missing input 'node_type'"):
        gnn.predict(model, {k: v for k, v in example.items() if k != "node_type"}, cfg)
    wrong = {**example, "edge_type": np.roll(example["edge_type"], 1)}
    with pytest.raises(ValueError, match="does not join the types of its nodes"):
        gnn.predict(model, wrong, cfg)
    with pytest.raises(ConfigError, match="untyped graph"):
        gnn.bind(gnn.Config(hetero=True, conv="sage"), {"task": "node", "num_features": 8, "num_classes": 4}, "x")
    with pytest.raises(ConfigError, match="relation-wise layers"):
        gnn.Config(hetero=True, conv="gcn").validate()
