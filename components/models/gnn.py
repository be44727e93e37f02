"""Graph neural networks on torch-geometric's layers (not rewritten here).

- GCN (Kipf & Welling 2017): H' = σ(D̂^{-1/2} Â D̂^{-1/2} H W), Â = A + I (symmetric normalisation);
- GraphSAGE (Hamilton et al. 2017), mean aggregation, the survey's eq. 7:
  h_v' = σ(W · mean_{u ∈ N(v)} h_u + B · h_v) (``SAGEConv``'s ``lin_l`` is W, ``lin_r`` is B);
- GAT (Veličković et al. 2018): multi-head attention over neighbours, heads concatenated;
- GIN (Xu et al. 2019): h_v' = MLP((1 + ε) h_v + Σ_{u ∈ N(v)} h_u), sum aggregation, for graph
  classification (as powerful as the 1-WL test);
- dropout, DropEdge (Rong et al. 2020), BatchNorm / LayerNorm / GraphNorm (Cai et al. 2021),
  residual connections for deeper stacks;
- a node-classification head, and a graph-classification head after a readout (mean, sum or
  attention pooling, Li et al. 2016).

Status: the model and its tests. The data layer (KarateClub, a stochastic block model,
graph-classification sets through the shards), the family contract and the stages come
next (issue 6); this module is not yet in the registry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric import nn as gnn
from torch_geometric.utils import dropout_edge

from components.config import ConfigError, bounds

PAPER = ("Kipf & Welling 2017 (GCN, arXiv:1609.02907); Hamilton et al. 2017 (GraphSAGE, arXiv:1706.02216); "
         "Veličković et al. 2018 (GAT, arXiv:1710.10903); Xu et al. 2019 (GIN, arXiv:1810.00826)")


@dataclass
class Config:
    """``train.gnn.model``. ``in_channels`` and ``num_classes`` come from the data (0 = bind them)."""
    conv: Literal["gcn", "sage", "gat", "gin"] = "gcn"
    task: Literal["node", "graph"] = "node"
    in_channels: int = field(default=0, metadata=bounds(ge=0))
    num_classes: int = field(default=0, metadata=bounds(ge=0))
    hidden: int = field(default=64, metadata=bounds(ge=1))
    layers: int = field(default=2, metadata=bounds(ge=1))
    heads: int = field(default=4, metadata=bounds(ge=1))  # GAT; hidden must divide by it
    dropout: float = field(default=0.5, metadata=bounds(ge=0, lt=1))
    drop_edge: float = field(default=0.0, metadata=bounds(ge=0, lt=1))
    norm: Literal["none", "batch", "layer", "graph"] = "none"
    residual: bool = False
    readout: Literal["mean", "sum", "attention"] = "mean"  # graph task

    def validate(self) -> None:
        if self.conv == "gat" and self.hidden % self.heads:
            raise ConfigError(f"heads: GAT concatenates heads, so hidden ({self.hidden}) must be divisible by "
                              f"heads ({self.heads})")


def _conv(kind: str, c_in: int, c_out: int, heads: int) -> nn.Module:
    if kind == "gcn":
        return gnn.GCNConv(c_in, c_out)
    if kind == "sage":
        return gnn.SAGEConv(c_in, c_out, aggr="mean")
    if kind == "gat":
        return gnn.GATConv(c_in, c_out // heads, heads=heads)
    if kind == "gin":
        return gnn.GINConv(nn.Sequential(nn.Linear(c_in, c_out), nn.ReLU(), nn.Linear(c_out, c_out)), train_eps=True)
    raise ValueError(f"unknown conv {kind!r}")


def _norm(kind: str, c: int) -> nn.Module | None:
    return {"none": None, "batch": lambda: gnn.BatchNorm(c), "layer": lambda: gnn.LayerNorm(c, mode="node"),
            "graph": lambda: gnn.GraphNorm(c)}[kind]() if kind != "none" else None


class GNN(nn.Module):
    """(x (N, F), edge_index (2, E)[, batch (N,)]) -> logits per node, or per graph."""

    def __init__(self, cfg: Config):
        super().__init__()
        if cfg.in_channels < 1 or cfg.num_classes < 2:
            raise ConfigError("in_channels/num_classes: bind the config to the data first (they are 0)")
        self.cfg = cfg
        dims = [cfg.in_channels] + [cfg.hidden] * cfg.layers
        self.convs = nn.ModuleList(_conv(cfg.conv, a, b, cfg.heads) for a, b in zip(dims[:-1], dims[1:]))
        norms = [_norm(cfg.norm, cfg.hidden) for _ in range(cfg.layers)]
        self.norms = nn.ModuleList(n for n in norms if n is not None) if cfg.norm != "none" else None
        self.pool = None
        if cfg.task == "graph":
            self.pool = {"mean": gnn.global_mean_pool, "sum": gnn.global_add_pool}.get(cfg.readout) or \
                gnn.aggr.AttentionalAggregation(nn.Linear(cfg.hidden, 1))
        self.head = nn.Linear(cfg.hidden, cfg.num_classes)

    def embed(self, x: torch.Tensor, edge_index: torch.Tensor, batch: torch.Tensor | None = None) -> torch.Tensor:
        """Node embeddings after the last layer: (N, hidden)."""
        edge_index, _ = dropout_edge(edge_index, p=self.cfg.drop_edge, training=self.training)
        h = x
        for i, conv in enumerate(self.convs):
            h_in = h
            h = conv(F.dropout(h, self.cfg.dropout, self.training) if i else h, edge_index)
            if self.norms is not None:
                norm = self.norms[i]
                h = norm(h, batch) if isinstance(norm, (gnn.GraphNorm, gnn.LayerNorm)) else norm(h)
            h = F.relu(h)
            if self.cfg.residual and h_in.shape == h.shape:
                h = h + h_in
        return h

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor, batch: torch.Tensor | None = None) -> torch.Tensor:
        h = self.embed(x, edge_index, batch)
        if self.pool is not None:
            if batch is None:
                batch = torch.zeros(len(h), dtype=torch.long, device=h.device)
            h = self.pool(h, batch)
        return self.head(F.dropout(h, self.cfg.dropout, self.training))


def build(cfg: Config) -> GNN:
    return GNN(cfg)
