"""GNN: every architecture on a tiny graph, equivariance to node order, the eq. 7 update of
GraphSAGE, and invariance of the graph-level readout."""

from __future__ import annotations

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
