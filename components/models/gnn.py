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
  attention pooling, Li et al. 2016);
- ``hetero: true`` on a typed graph (``components/data/graphs.py``, source ``typed``): the same
  stack with its own weights per relation, torch-geometric's ``HeteroConv`` summing each node
  type's incoming relations (Schlichtkrull et al. 2018's relational message passing, as HetGNN
  and PyG's ``to_hetero`` build it); ``hetero: false`` runs the type-blind network on the same
  graph, so the two compare.

Data (``components/data/graphs.py``): a batch is ``(x, edge_index, index, target)``. For
the node task ``index`` holds the seed nodes' positions in ``x`` (the whole graph on one
worker; each worker's sampled neighbourhood of its seeds with ``fanout``, see
:func:`loader_options`); for the graph task it assigns each node to its graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric import nn as gnn
from torch_geometric.utils import add_self_loops, dropout_edge

from components.config import ConfigError, bounds
from components.data.graphs import check_edge_index
from components.models.contract import Report

PAPER = ("Kipf & Welling 2017 (GCN, arXiv:1609.02907); Hamilton et al. 2017 (GraphSAGE, arXiv:1706.02216); "
         "Veličković et al. 2018 (GAT, arXiv:1710.10903); Xu et al. 2019 (GIN, arXiv:1810.00826)")
PRIMARY_METRIC, PRIMARY_MODE = "accuracy", "max"  # test nodes (or graphs); register compares it
SERVING_REQUIREMENTS = ("torch-geometric==2.8.1",)  # predict runs the torch-geometric layers
SELECT_BY = (("accuracy", "max"), ("nll", "min"))
VAL_METRIC, VAL_MODE = "val_accuracy", "max"


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
    # Node task: full-batch on one worker, neighbour-sampled mini-batches on several (auto);
    # fanout = neighbours drawn per hop, one entry per layer (-1 = all).
    sampling: Literal["auto", "full", "neighbor"] = "auto"
    fanout: list[int] = field(default_factory=lambda: [10, 10])
    hetero: bool = False  # a weight set per relation of a typed graph (HeteroConv); false: type-blind
    node_types: list[str] = field(default_factory=list)  # a typed graph's, from the data (bind); leave unset
    edge_types: list[list[str]] = field(default_factory=list)  # (source, relation, target), from the data

    def validate(self) -> None:
        if self.hetero and (self.conv not in HETERO_CONVS or self.task != "node" or self.norm != "none"):
            raise ConfigError(f"hetero: relation-wise layers are {HETERO_CONVS} for node classification without "
                              f"norm layers; got conv {self.conv}, task {self.task}, norm {self.norm}")
        if self.conv == "gat" and self.hidden % self.heads:
            raise ConfigError(f"heads: GAT concatenates heads, so hidden ({self.hidden}) must be divisible by "
                              f"heads ({self.heads})")
        if self.task == "node" and self.sampling != "full" and len(self.fanout) != self.layers:
            raise ConfigError(f"fanout: one entry per layer, so {self.layers} entries (the receptive field of "
                              f"{self.layers} layers), got {self.fanout}")
        if any(k == 0 or k < -1 for k in self.fanout):
            raise ConfigError(f"fanout: entries must be >= 1 (or -1 for every neighbour), got {self.fanout}")


# GCN and GAT take each node's self-loop as one of its edges. The model adds the loops once, before
# the first layer, rather than each layer: PyG's own (add_self_loops=True) first drops the loops
# already there with a boolean mask, whose data-dependent size waits for the GPU in every layer of
# every step. Edges arrive without self-loops (graphs.undirected stores none; predict strips them),
# so the edges and their order, hence the numbers, are the same.
SELF_LOOPS = ("gcn", "gat")
HETERO_CONVS = ("sage", "gat", "gin")  # layers that read a (source, target) pair of node sets


def _conv(kind: str, c_in: int, c_out: int, heads: int) -> nn.Module:
    if kind == "gcn":
        return gnn.GCNConv(c_in, c_out, add_self_loops=False)
    if kind == "sage":
        return gnn.SAGEConv(c_in, c_out, aggr="mean")
    if kind == "gat":
        return gnn.GATConv(c_in, c_out // heads, heads=heads, add_self_loops=False)
    if kind == "gin":
        return gnn.GINConv(nn.Sequential(nn.Linear(c_in, c_out), nn.ReLU(), nn.Linear(c_out, c_out)), train_eps=True)
    raise ValueError(f"unknown conv {kind!r}")


def _norm(kind: str, c: int) -> nn.Module | None:
    return {"none": None, "batch": lambda: gnn.BatchNorm(c), "layer": lambda: gnn.LayerNorm(c, mode="node"),
            "graph": lambda: gnn.GraphNorm(c)}[kind]() if kind != "none" else None


class GNN(nn.Module):
    """(x (N, F), edge_index (2, E) without self-loops[, batch (N,), num_graphs]) -> logits per
    node, or per graph. ``num_graphs`` (the batch's graph count, known on the host) spares the
    pooling a read of ``batch.max()`` from the device."""

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
        if self.cfg.conv in SELF_LOOPS:
            edge_index, _ = add_self_loops(edge_index, num_nodes=x.size(0))
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

    def readout(self, h: torch.Tensor, batch: torch.Tensor | None, num_graphs: int | None = None) -> torch.Tensor:
        """Graph task: node embeddings pooled per graph (batch = each node's graph)."""
        if batch is None:
            batch, num_graphs = torch.zeros(len(h), dtype=torch.long, device=h.device), 1
        if isinstance(self.pool, gnn.aggr.Aggregation):
            return self.pool(h, batch, dim_size=num_graphs)
        return self.pool(h, batch, num_graphs)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor, batch: torch.Tensor | None = None,
                num_graphs: int | None = None) -> torch.Tensor:
        h = self.embed(x, edge_index, batch)
        if self.pool is not None:
            h = self.readout(h, batch, num_graphs)
        return self.head(F.dropout(h, self.cfg.dropout, self.training))


def _relation_conv(kind: str, c_in: int, c_out: int, heads: int) -> nn.Module:
    """One relation's layer, from its source type's nodes to its target type's (no self-loops:
    the two are different node sets; SAGE's root weight is the node's own term)."""
    if kind == "sage":
        return gnn.SAGEConv((c_in, c_in), c_out, aggr="mean")
    if kind == "gat":
        return gnn.GATConv((c_in, c_in), c_out // heads, heads=heads, add_self_loops=False)
    if kind == "gin":  # GINConv reads a (source, target) pair as it is
        return _conv(kind, c_in, c_out, heads)
    raise ValueError(f"conv {kind!r} has no relation-wise form; use one of {HETERO_CONVS}")


class HeteroGNN(nn.Module):
    """The GNN with a weight set per relation: each layer is a ``HeteroConv`` that sums, per node
    type, its incoming relations' messages. Takes the typed graph as one node table with
    ``node_type`` and ``edge_type`` (as batches carry it) and returns logits (N, C), the rows of
    the labelled type (``node_types[0]``) filled, the others zero."""

    def __init__(self, cfg: Config):
        super().__init__()
        if cfg.in_channels < 1 or cfg.num_classes < 2 or not cfg.edge_types:
            raise ConfigError("in_channels/num_classes/edge_types: bind the config to a typed graph first")
        self.cfg = cfg
        self.relations = [tuple(t) for t in cfg.edge_types]
        dims = [cfg.in_channels] + [cfg.hidden] * cfg.layers
        self.convs = nn.ModuleList(
            gnn.HeteroConv({r: _relation_conv(cfg.conv, a, b, cfg.heads) for r in self.relations}, aggr="sum")
            for a, b in zip(dims[:-1], dims[1:]))
        self.head = nn.Linear(cfg.hidden, cfg.num_classes)

    def _split(self, x: torch.Tensor, edge_index: torch.Tensor, node_type: torch.Tensor, edge_type: torch.Tensor):
        """The node table and edge list as torch-geometric's dicts by type, each node renumbered
        within its type. The boolean masks make the host wait for the device once per type and
        relation each step (their sizes are data); the GPU floors do not cover this model yet."""
        types = self.cfg.node_types
        local = (F.one_hot(node_type, len(types)).cumsum(0) - 1).gather(1, node_type[:, None])[:, 0]
        x_dict = {t: x[node_type == i] for i, t in enumerate(types)}
        edge_dict = {}
        for r, relation in enumerate(self.relations):
            e = edge_index[:, edge_type == r]
            edge_dict[relation] = torch.stack([local[e[0]], local[e[1]]])
        return x_dict, edge_dict

    def embed(self, x: torch.Tensor, edge_index: torch.Tensor, batch: torch.Tensor | None = None,
              node_type: torch.Tensor | None = None, edge_type: torch.Tensor | None = None) -> torch.Tensor:
        """Embeddings (N, hidden) of the labelled type's nodes, in their rows (the others zero)."""
        if node_type is None or edge_type is None:
            raise ValueError("a relation-wise GNN needs each node's node_type and each edge's edge_type")
        edge_index, kept = dropout_edge(edge_index, p=self.cfg.drop_edge, training=self.training)
        x_dict, edge_dict = self._split(x, edge_index, node_type, edge_type[kept])
        for i, conv in enumerate(self.convs):
            h_in = x_dict
            x_dict = conv({t: F.dropout(h, self.cfg.dropout, self.training) if i else h for t, h in x_dict.items()},
                          edge_dict)
            x_dict = {t: F.relu(h) for t, h in x_dict.items()}
            if self.cfg.residual:
                x_dict = {t: h + h_in[t] if h_in[t].shape == h.shape else h for t, h in x_dict.items()}
        target = node_type == 0
        out = x.new_zeros(len(x), self.cfg.hidden)
        out[target] = x_dict[self.cfg.node_types[0]]
        return out

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor, batch: torch.Tensor | None = None,
                num_graphs: int | None = None, node_type: torch.Tensor | None = None,
                edge_type: torch.Tensor | None = None) -> torch.Tensor:
        h = self.embed(x, edge_index, None, node_type, edge_type)
        return self.head(F.dropout(h, self.cfg.dropout, self.training)) * (node_type == 0)[:, None]


def build(cfg: Config) -> nn.Module:
    return HeteroGNN(cfg) if cfg.hetero else GNN(cfg)


def bind(cfg: Config, stats: dict, data_dir) -> Config:
    """Feature and class counts from the data; the task must match the dataset's."""
    task = stats.get("task")
    if task not in ("node", "graph"):
        raise ConfigError(f"{data_dir}: not a graph dataset (stats.json has no node/graph task); point "
                          f"algorithms.<name>.dataset at a data section of type graphs")
    if task != cfg.task:
        raise ConfigError(f"task: the dataset is for {task} classification, the model is set to {cfg.task}; "
                          f"set model.task: {task}")
    for key, have in (("in_channels", stats["num_features"]), ("num_classes", stats["num_classes"])):
        if getattr(cfg, key) not in (0, have):
            raise ConfigError(f"{key}: the data has {have}, the model {getattr(cfg, key)}; set it to {have} or 0")
    cfg.in_channels, cfg.num_classes = stats["num_features"], stats["num_classes"]
    if cfg.hetero and "edge_types" not in stats:
        raise ConfigError(f"hetero: {data_dir} is an untyped graph (no node or edge types); point the algorithm "
                          f"at a typed graph (data.<name>.source: typed) or set hetero: false")
    if cfg.hetero:
        cfg.node_types, cfg.edge_types = list(stats["node_types"]), [list(t) for t in stats["edge_types"]]
    return cfg


def loader_options(cfg: Config, world_size: int) -> dict:
    """Train batches: the whole graph on one worker, sampled neighbourhoods on several (node task)."""
    sample = cfg.task == "node" and (cfg.sampling == "neighbor" or (cfg.sampling == "auto" and world_size > 1))
    return {"fanout": list(cfg.fanout)} if sample else {}


def _types(batch: tuple, cfg: Config) -> dict[str, torch.Tensor]:
    """A typed graph's node and edge types, for a relation-wise model (a type-blind one ignores them)."""
    return {"node_type": batch[4], "edge_type": batch[5]} if cfg.hetero else {}


def _logits(model: nn.Module, batch: tuple, cfg: Config) -> tuple[torch.Tensor, torch.Tensor]:
    x, edge_index, index, target = batch[:4]
    if cfg.task == "node":
        return model(x, edge_index, **_types(batch, cfg))[index], target
    return model(x, edge_index, index, len(target)), target


def training_step(model: nn.Module, batch: tuple, cfg: Config, label_smoothing: float = 0.0,
                  progress: float = 0.0) -> dict[str, torch.Tensor]:
    logits, target = _logits(model, batch, cfg)
    loss = F.cross_entropy(logits, target, label_smoothing=label_smoothing)
    with torch.no_grad():
        correct = (logits.argmax(1) == target).sum()
    return {"loss": loss, "correct": correct, "count": torch.tensor(target.numel())}


@torch.no_grad()
def eval_step(model: nn.Module, batch: tuple, cfg: Config) -> dict[str, torch.Tensor]:
    """Sums over the batch's seed nodes (or graphs), for exact means over all workers."""
    model = getattr(model, "module", model)
    logits, target = _logits(model, batch, cfg)
    return {"loss": F.cross_entropy(logits, target, reduction="sum"), "correct": (logits.argmax(1) == target).sum(),
            "count": torch.tensor(target.numel())}


# ---------------------------------------------------------------------------- evaluate / register

@torch.no_grad()
def evaluate(model: GNN, cfg: Config, shard_dir, split: str, detail: bool = True) -> dict:
    """Accuracy, macro-F1, NLL, ECE and the confusion matrix on a split's nodes (or graphs), with
    their embeddings (the last layer's, pooled per graph) for a 2-D projection."""
    from components.data.registry import open_split
    from components.data.shards import read_stats
    from components.evaluation.classification import classification_report

    model.eval()
    probs, labels, embeddings = [], [], []
    for batch in open_split(shard_dir, split, batch_size=1 << 16):
        x, edge_index, index, target = batch[:4]
        h = model.embed(x, edge_index, index if cfg.task == "graph" else None, **_types(batch, cfg))
        h = h[index] if cfg.task == "node" else model.readout(h, index, len(target))
        probs.append(torch.softmax(model.head(h), 1).numpy())
        labels.append(target.numpy())
        embeddings.append(h.numpy())
    result = classification_report(np.concatenate(probs), np.concatenate(labels))
    stats = read_stats(shard_dir)
    result.update(embeddings=np.concatenate(embeddings), labels=np.concatenate(labels), task=cfg.task, conv=cfg.conv,
                  graph={k: stats[k] for k in ("homophily", "num_nodes", "num_edges") if k in stats})
    return result


def report(result: dict, title: str, name: str, where: str) -> Report:
    """Per-class accuracy as markdown; the confusion matrix and an embedding projection as figures."""
    from components.evaluation import plots

    what = "nodes" if result["task"] == "node" else "graphs"
    figures = {f"confusion_{name}.png": plots.confusion(np.array(result["confusion_matrix"]),
                                                        f"{title}: accuracy {result['accuracy']:.4f}"),
               f"embeddings_{name}.png": plots.latent_projection(
                   result["embeddings"], result["labels"],
                   f"{title}: {result['conv'].upper()} embeddings of test {what} (PCA)")}
    g = result["graph"]
    graph = (f"Graph: {g['num_nodes']} nodes, {g['num_edges'] // 2} edges, homophily {g['homophily']:.3f} "
             f"(the fraction of edges inside a class).\n\n" if g else "")
    rows = "\n".join(f"| {c} | {a:.4f} |" for c, a in result["per_class_accuracy"].items())
    return Report(f"## {title}\n\n{graph}{result['num_samples']} test {what}: accuracy {result['accuracy']:.4f}, "
                  f"macro-F1 {result['macro_f1']:.4f}, NLL {result['nll']:.4f}, ECE {result['ece']:.4f}\n\n"
                  f"| class | accuracy |\n|---|---|\n{rows}\n\nImages: `{where}/{{confusion,embeddings}}_{name}.png`\n",
                  figures)


# ------------------------------------------------------------------------------------ serving

def _tensor(inputs: dict, key: str, kind: str) -> torch.Tensor:
    if key not in inputs:
        raise ValueError(f"missing input {key!r}: pass a dict with 'x' (num_nodes, features) float32 and "
                         f"'edge_index' (2, num_edges) int64" + (" and 'batch' (num_nodes,) int64" if key == "batch" else ""))
    value = np.asarray(inputs[key])
    if kind == "float" and not np.issubdtype(value.dtype, np.floating):
        raise TypeError(f"{key}: expected floats, got dtype {value.dtype}")
    return torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32)) if kind == "float" else torch.as_tensor(value)


def _typed_inputs(inputs: dict, x: torch.Tensor, edge_index: torch.Tensor, cfg: Config) -> dict[str, torch.Tensor]:
    """``node_type`` (num_nodes,) and ``edge_type`` (num_edges,) of a typed graph, checked against
    the model's types."""
    out = {}
    for key, count, names in (("node_type", len(x), cfg.node_types), ("edge_type", edge_index.shape[1],
                                                                         cfg.edge_types)):
        if inputs.get(key) is None:
            raise ValueError(f"missing input {key!r}: this model reads a typed graph; pass {key} ({count},) int64, "
                             f"ids into {names}")
        value = _tensor(inputs, key, "int").long()
        if value.shape != (count,) or (count and (int(value.min()) < 0 or int(value.max()) >= len(names))):
            raise ValueError(f"{key}: expected shape ({count},) with ids 0..{len(names) - 1} ({names}), got shape "
                             f"{tuple(value.shape)}")
        out[key] = value
    ends = torch.tensor([[cfg.node_types.index(s), cfg.node_types.index(d)] for s, _, d in cfg.edge_types])
    bad = (out["node_type"][edge_index.T] != ends[out["edge_type"]]).any(1)
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise ValueError(f"edge {i}: its edge_type {cfg.edge_types[int(out['edge_type'][i])]} does not join the types "
                         f"of its nodes")
    return out


@torch.no_grad()
def predict(model: nn.Module, inputs: Any, cfg: Config) -> np.ndarray:
    """Class probabilities: per node (num_nodes, C) for a node model; per graph (num_graphs, C) for
    a graph model, whose ``batch`` assigns each node to its graph (0..G-1; absent = one graph).

    ``inputs``: a dict of arrays, ``x`` (num_nodes, in_channels) float and ``edge_index``
    (2, num_edges) integer node ids, edges as columns, both directions for an undirected graph.
    """
    model.eval()
    if not isinstance(inputs, dict):
        raise TypeError(f"expected a dict of arrays {{'x', 'edge_index'[, 'batch']}}, got {type(inputs).__name__}")
    x = _tensor(inputs, "x", "float")
    if x.dim() != 2 or x.shape[1] != cfg.in_channels:
        raise ValueError(f"x: expected node features of shape (num_nodes, {cfg.in_channels}), got {tuple(x.shape)}")
    edge_index = check_edge_index(_tensor(inputs, "edge_index", "int"), len(x))
    if cfg.hetero:  # probabilities of the labelled type's nodes, in their order
        types = _typed_inputs(inputs, x, edge_index, cfg)
        return torch.softmax(model(x, edge_index, **types)[types["node_type"] == 0], 1).numpy()
    edge_index = edge_index[:, edge_index[0] != edge_index[1]]  # the model adds each node's own loop
    if cfg.task == "node":
        return torch.softmax(model(x, edge_index), 1).numpy()
    batch = torch.zeros(len(x), dtype=torch.long) if inputs.get("batch") is None else \
        _tensor(inputs, "batch", "int").long()
    if batch.shape != (len(x),) or (len(batch) and (int(batch.min()) < 0 or
                                                   len(torch.unique(batch)) != int(batch.max()) + 1)):
        raise ValueError(f"batch: expected each node's graph id, shape ({len(x)},) with ids 0..G-1 all present, "
                         f"got shape {tuple(batch.shape)}")
    return torch.softmax(model(x, edge_index, batch), 1).numpy()


def signature(cfg: Config):
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    # edge_index's shape is checked by predict (a clear message for the (E, 2) mistake), not MLflow.
    inputs = [TensorSpec(np.dtype(np.float32), (-1, cfg.in_channels), "x"),
              TensorSpec(np.dtype(np.int64), (-1, -1), "edge_index")]
    if cfg.task == "graph":
        inputs.append(TensorSpec(np.dtype(np.int64), (-1,), "batch"))
    if cfg.hetero:
        inputs += [TensorSpec(np.dtype(np.int64), (-1,), "node_type"), TensorSpec(np.dtype(np.int64), (-1,), "edge_type")]
    return ModelSignature(inputs=Schema(inputs), outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, cfg.num_classes))]))


def serving_example(cfg: Config) -> dict:
    """A 4-node path graph (two graphs of two nodes for a graph model)."""
    example = {"x": np.ones((4, cfg.in_channels), dtype=np.float32),
               "edge_index": np.array([[0, 1, 1, 2, 2, 3], [1, 0, 2, 1, 3, 2]], dtype=np.int64)}
    if cfg.task == "graph":
        example["edge_index"] = np.array([[0, 1, 2, 3], [1, 0, 3, 2]], dtype=np.int64)
        example["batch"] = np.array([0, 0, 1, 1], dtype=np.int64)
    if cfg.hetero:  # nodes 0..3 of types 0, 0, 1, 2 (two of the labelled type); one edge per relation
        types = [cfg.node_types.index(t) for t in (cfg.node_types[0], cfg.node_types[0])] + \
            list(range(1, len(cfg.node_types)))
        node_of = {t: types.index(t) for t in set(types)}
        ends = [(node_of[cfg.node_types.index(s)], node_of[cfg.node_types.index(d)]) for s, _, d in cfg.edge_types]
        ends = [(0, 1) if a == b else (a, b) for a, b in ends]  # a relation within one type: two of its nodes
        example = {"x": np.ones((len(types), cfg.in_channels), dtype=np.float32),
                   "edge_index": np.array(ends, dtype=np.int64).T.reshape(2, -1),
                   "node_type": np.array(types, dtype=np.int64),
                   "edge_type": np.arange(len(cfg.edge_types), dtype=np.int64)}
    return example


def usage(name: str, cfg: Config) -> str:
    return (f'`mlflow.pyfunc.load_model("models:/{name}@champion").predict({{"x": x, "edge_index": edge_index}})` '
            f'with x float32 (num_nodes, features) and edge_index int64 (2, num_edges), both directions of each '
            f'edge; returns class probabilities per node. A graph-classification model also takes "batch" (each '
            f'node\'s graph id) and returns probabilities per graph.'
            + (f' This one reads a typed graph: also "node_type" (num_nodes,) ids into {cfg.node_types} and '
               f'"edge_type" (num_edges,) ids into its relations; it returns probabilities per {cfg.node_types[0]}.'
               if cfg.hetero else ''))
