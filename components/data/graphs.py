"""Graphs: node classification on one graph, graph classification on many, through the same shards.

Sources (``data.<name>.source``):

- ``sbm``: a generated community benchmark, a stochastic block model (Holland et al. 1983)
  with thousands of nodes: each node has ``degree_in`` expected neighbours in its own
  community and ``degree_out`` elsewhere, and noisy features (its community's centroid
  plus unit Gaussian noise), so neither the features nor the edges alone classify it well.
- ``typed``: a generated heterogeneous graph of papers, authors and venues (as OGB-MAG's, small),
  where the types carry the signal: a paper's class is its field; its features say so only
  weakly; its authors and its venue mostly share its field; its citations are drawn at random.
  A model that tells the edge types apart reads the field off the author and venue paths; a
  type-blind one averages them with the random citations.
- ``karate``: Zachary's karate club (34 nodes, 4 classes), shipped inside torch-geometric.
- ``planetoid``: Cora, CiteSeer or PubMed (``name``) in the Planetoid format
  (``<path>/<name>/raw/ind.<name>.{x,tx,allx,y,ty,ally,graph,test.index}``), read by
  torch-geometric's loader; ``split: public`` keeps the standard 20-per-class split.
- ``families``: generated graph classification: graphs from five random-graph families
  (Erdős–Rényi, Barabási–Albert, Watts–Strogatz, a 2-block SBM, random geometric) with
  matched mean degree and a constant node feature; the class is the family, so a model must
  tell them apart by structure alone (degree spread, clustering, communities).
- ``tu``: a TUDataset (``name``: MUTAG, PROTEINS...) from ``<path>/<name>/raw/``.

One data interface: a sample is a row of the WebDataset shards either way.

- Node task: a sample is a seed node (``node.cls``, ``target.cls``); the graph itself is a
  dataset asset, ``graph.npz`` beside the shards (like the translation tokenizer). A batch of
  seeds becomes ``(x, edge_index, index, target)``: on one worker the whole graph with
  ``index`` the seeds' positions in it (full-batch training when a batch holds every seed);
  with ``fanout`` set, the seeds' sampled L-hop neighbourhood (seeds first, as
  torch-geometric's NeighborLoader builds it), so each Ray worker trains on mini-batches
  around its own share of the seed nodes.
- Graph task: a sample is a graph (``x.npy``, ``edge_index.npy``, ``target.cls``); a batch
  is ``(x, edge_index, index, target)`` with the graphs' nodes concatenated, edge ids
  offset, and ``index`` each node's graph, as torch-geometric's ``Batch`` does.

Edges are stored in both directions, without self-loops or duplicates. A typed graph keeps
each node's type and each edge's relation beside them (``node_type``, ``edge_type``; the names
in stats.json), and its batches carry them: ``(x, edge_index, index, target, node_type,
edge_type)``, sampled over all relations at once. Only the target type's nodes are labelled.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from components.config import ConfigError, bounds
from components.data.manifest import DataError, sha256, write_manifest
from components.data.shards import Batcher, BatchOptions, rebuild_hint
from components.data.splits import SPLITS, stratified_split
from components.data.writer import write_shards

GRAPH = "graph.npz"
NODE_SOURCES = ("sbm", "karate", "planetoid", "typed")
NODE_TYPES = ("paper", "author", "venue")  # a typed graph's node types, the first the labelled one
EDGE_TYPES = (("paper", "written_by", "author"), ("author", "writes", "paper"), ("paper", "published_in", "venue"),
              ("venue", "publishes", "paper"), ("paper", "cites", "paper"))
FAMILIES = ("erdos_renyi", "barabasi_albert", "watts_strogatz", "two_communities", "random_geometric")


@dataclass
class SBMConfig:
    """``data.<name>.sbm``: the generated community graph."""
    num_nodes: int = field(default=3000, metadata=bounds(ge=10))
    communities: int = field(default=6, metadata=bounds(ge=2))
    degree_in: float = field(default=8.0, metadata=bounds(gt=0))  # expected neighbours in the own community
    degree_out: float = field(default=4.0, metadata=bounds(ge=0))  # expected neighbours in all others
    feature_dim: int = field(default=32, metadata=bounds(ge=1))
    feature_signal: float = field(default=1.0, metadata=bounds(ge=0))  # centroid norm; the noise is N(0, I)


@dataclass
class TypedConfig:
    """``data.<name>.typed``: the generated graph of papers, authors and venues."""
    papers: int = field(default=2000, metadata=bounds(ge=10))
    authors: int = field(default=1000, metadata=bounds(ge=2))
    venues: int = field(default=50, metadata=bounds(ge=2))
    fields: int = field(default=5, metadata=bounds(ge=2))  # the classes
    feature_dim: int = field(default=16, metadata=bounds(ge=1))
    feature_signal: float = field(default=0.6, metadata=bounds(ge=0))  # a paper's field centroid's norm
    authors_per_paper: int = field(default=3, metadata=bounds(ge=1))
    author_in_field: float = field(default=0.8, metadata=bounds(ge=0, le=1))  # else any author
    venue_in_field: float = field(default=0.7, metadata=bounds(ge=0, le=1))  # else any venue
    cites_per_paper: int = field(default=5, metadata=bounds(ge=0))  # drawn at random: no signal


@dataclass
class FamiliesConfig:
    """``data.<name>.families``: the generated graph-classification set."""
    graphs_per_family: int = field(default=200, metadata=bounds(ge=4))
    min_nodes: int = field(default=20, metadata=bounds(ge=8))
    max_nodes: int = field(default=40, metadata=bounds(ge=8))
    mean_degree: float = field(default=4.0, metadata=bounds(ge=2))

    def validate(self) -> None:
        if self.max_nodes < self.min_nodes:
            raise ConfigError(f"max_nodes: must be >= min_nodes ({self.min_nodes}), got {self.max_nodes}")


@dataclass
class Config:
    """``data.<name>`` for a graph dataset (``type: graphs``)."""
    source: Literal["sbm", "karate", "planetoid", "typed", "families", "tu"] = "sbm"
    name: str = ""  # planetoid: Cora, CiteSeer, PubMed; tu: MUTAG, PROTEINS, ...
    path: str = ""  # the folder holding <name>/raw/ (relative to the repository root or absolute)
    split: Literal["random", "public"] = "random"  # public: the dataset's own masks (planetoid)
    seed: int = 0
    val_fraction: float = field(default=0.2, metadata=bounds(gt=0, lt=0.5))
    test_fraction: float = field(default=0.2, metadata=bounds(gt=0, lt=0.5))
    samples_per_shard: int = field(default=256, metadata=bounds(ge=1))
    sbm: SBMConfig = field(default_factory=SBMConfig)
    typed: TypedConfig = field(default_factory=TypedConfig)
    families: FamiliesConfig = field(default_factory=FamiliesConfig)

    def validate(self) -> None:
        if self.source in ("planetoid", "tu") and not (self.name and self.path):
            raise ConfigError(f"source: {self.source} needs name (e.g. {'Cora' if self.source == 'planetoid' else 'MUTAG'}) "
                              f"and path (the folder holding <name>/raw/)")
        if self.split == "public" and self.source != "planetoid":
            raise ConfigError(f"split: public needs a dataset with its own split (planetoid), not {self.source}")

    @property
    def task(self) -> str:
        return "node" if self.source in NODE_SOURCES else "graph"


# ---------------------------------------------------------------------------- graph utilities

def undirected(edge_index: np.ndarray, num_nodes: int) -> np.ndarray:
    """Both directions of every edge, no self-loops, no duplicates, sorted by (target, source)."""
    ei = np.asarray(edge_index, dtype=np.int64).reshape(2, -1)
    ei = np.concatenate([ei, ei[::-1]], axis=1)
    ei = ei[:, ei[0] != ei[1]]
    keys = np.unique(ei[1] * num_nodes + ei[0])
    return np.stack([keys % num_nodes, keys // num_nodes])


def check_edge_index(edge_index, num_nodes: int, what: str = "edge_index") -> torch.Tensor:
    """``edge_index`` as a (2, E) long tensor of ids in [0, num_nodes); anything else gets a clear error."""
    ei = torch.as_tensor(np.asarray(edge_index))
    if ei.dim() != 2 or ei.shape[0] != 2:
        hint = " (transpose it: edges are columns)" if ei.dim() == 2 and ei.shape[1] == 2 else ""
        raise ValueError(f"{what}: must have shape (2, num_edges), got {tuple(ei.shape)}{hint}")
    if ei.dtype == torch.bool or (ei.is_floating_point() and not torch.equal(ei, ei.round())):
        raise ValueError(f"{what}: node ids must be integers, got {ei.dtype} values")
    ei = ei.long()
    if ei.numel() and (int(ei.min()) < 0 or int(ei.max()) >= num_nodes):
        raise ValueError(f"{what}: node ids must be in [0, {num_nodes}) for {num_nodes} nodes, got ids "
                         f"{int(ei.min())}..{int(ei.max())}")
    return ei


def homophily(edge_index: np.ndarray, y: np.ndarray) -> float:
    """Fraction of edges joining nodes of the same class."""
    return float((y[edge_index[0]] == y[edge_index[1]]).mean()) if edge_index.shape[1] else 0.0


# ---------------------------------------------------------------------------- sources

def stochastic_block_model(cfg: SBMConfig, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, edge_index, y): equal communities, edge probabilities set by the expected degrees."""
    import networkx as nx

    sizes = [len(part) for part in np.array_split(np.arange(cfg.num_nodes), cfg.communities)]
    n = sizes[0]
    p_in = min(1.0, cfg.degree_in / max(n - 1, 1))
    p_out = min(1.0, cfg.degree_out / max(cfg.num_nodes - n, 1))
    probs = [[p_in if a == b else p_out for b in range(cfg.communities)] for a in range(cfg.communities)]
    g = nx.stochastic_block_model(sizes, probs, seed=seed, sparse=True)
    y = np.repeat(np.arange(cfg.communities), sizes)
    edge_index = undirected(np.array(list(g.edges()), dtype=np.int64).T.reshape(2, -1), cfg.num_nodes)
    rng = np.random.default_rng(seed + 1)
    centroids = rng.standard_normal((cfg.communities, cfg.feature_dim))
    centroids *= cfg.feature_signal / np.linalg.norm(centroids, axis=1, keepdims=True)
    x = (centroids[y] + rng.standard_normal((cfg.num_nodes, cfg.feature_dim))).astype(np.float32)
    return x, edge_index, y.astype(np.int64)


def typed_graph(cfg: TypedConfig, seed: int) -> dict[str, np.ndarray]:
    """Papers, then authors, then venues, in one node table: ``x`` (N, feature_dim), ``y`` (the
    paper's field; -1 for the others), ``node_type`` (N,), and ``edge_index`` (2, E) with each
    edge's relation (an index into :data:`EDGE_TYPES`) in ``edge_type``; no duplicate edges."""
    rng = np.random.default_rng(seed)
    k, p, a, v = cfg.fields, cfg.papers, cfg.authors, cfg.venues
    y = rng.integers(0, k, p)
    author_field, venue_field = rng.integers(0, k, a), np.arange(v) % k
    centroids = rng.standard_normal((k, cfg.feature_dim))
    centroids *= cfg.feature_signal / np.linalg.norm(centroids, axis=1, keepdims=True)
    x = np.concatenate([centroids[y] + rng.standard_normal((p, cfg.feature_dim)),
                        rng.standard_normal((a + v, cfg.feature_dim))]).astype(np.float32)

    def pick(count: int, field_of: np.ndarray, in_field: float, per_paper: int) -> np.ndarray:
        """``per_paper`` picks per paper: one of its field's with probability ``in_field``, else any."""
        paper = np.repeat(np.arange(p), per_paper)
        by_field = [np.flatnonzero(field_of == f) for f in range(k)]
        own = np.array([rng.choice(by_field[f]) if len(by_field[f]) else rng.integers(count) for f in y[paper]])
        return np.stack([paper, np.where(rng.random(len(paper)) < in_field, own, rng.integers(0, count, len(paper)))])

    writes = pick(a, author_field, cfg.author_in_field, cfg.authors_per_paper)
    venue = pick(v, venue_field, cfg.venue_in_field, 1)
    cites = np.stack([np.repeat(np.arange(p), cfg.cites_per_paper), rng.integers(0, p, p * cfg.cites_per_paper)])
    cites = undirected(cites, p)
    relations = [writes + [[0], [p]], (writes + [[0], [p]])[::-1], venue + [[0], [p + a]],
                 (venue + [[0], [p + a]])[::-1], cites]
    relations = [np.unique(r, axis=1) for r in relations]
    node_type = np.repeat(np.arange(3), [p, a, v])
    return {"x": x, "y": np.concatenate([y, np.full(a + v, -1)]).astype(np.int64), "node_type": node_type,
            "edge_index": np.concatenate(relations, axis=1).astype(np.int64),
            "edge_type": np.repeat(np.arange(len(relations)), [r.shape[1] for r in relations])}


def _family_graph(family: str, n: int, degree: float, rng: np.random.Generator):
    import networkx as nx

    seed = int(rng.integers(2**31))
    if family == "erdos_renyi":
        return nx.gnp_random_graph(n, degree / (n - 1), seed=seed)
    if family == "barabasi_albert":
        return nx.barabasi_albert_graph(n, max(1, round(degree / 2)), seed=seed)
    if family == "watts_strogatz":
        return nx.watts_strogatz_graph(n, max(2, round(degree)), 0.1, seed=seed)
    if family == "two_communities":
        half = [n // 2, n - n // 2]
        p_out = 0.1 * degree / n
        p_in = (degree - p_out * half[1]) / (half[0] - 1)
        return nx.stochastic_block_model(half, [[p_in, p_out], [p_out, p_in]], seed=seed)
    if family == "random_geometric":
        return nx.random_geometric_graph(n, float(np.sqrt(degree / (np.pi * (n - 1)))), seed=seed)
    raise ValueError(family)


def random_graph_families(cfg: FamiliesConfig, seed: int) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """(x (n, 1) ones, edge_index, family id) per graph; sizes uniform in [min_nodes, max_nodes]."""
    rng = np.random.default_rng(seed)
    graphs = []
    for label, family in enumerate(FAMILIES):
        for _ in range(cfg.graphs_per_family):
            n = int(rng.integers(cfg.min_nodes, cfg.max_nodes + 1))
            g = _family_graph(family, n, cfg.mean_degree, rng)
            ei = np.array(list(g.edges()), dtype=np.int64).T.reshape(2, -1)
            graphs.append((np.ones((n, 1), np.float32), undirected(ei, n), label))
    return graphs


def _root(cfg: Config) -> Path:
    return Path(cfg.path).expanduser().resolve()


def _require(files: list[Path], what: str, fix: str) -> None:
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        raise DataError(f"{what}: {len(missing)} raw file(s) missing, e.g. {missing[0]}; {fix}. Nothing is "
                        f"downloaded at run time.")


def load_planetoid(cfg: Config):
    from torch_geometric.datasets import Planetoid

    name = cfg.name.lower()
    raw = _root(cfg) / cfg.name / "raw"
    _require([raw / f"ind.{name}.{s}" for s in ("x", "tx", "allx", "y", "ty", "ally", "graph", "test.index")],
             f"planetoid {cfg.name}", f"put the Planetoid files (ind.{name}.x ... ind.{name}.test.index, from "
             f"github.com/kimiyoung/planetoid/tree/master/data) in {raw}")
    return Planetoid(str(_root(cfg)), cfg.name)[0]


def load_tu(cfg: Config):
    from torch_geometric.datasets import TUDataset

    raw = _root(cfg) / cfg.name / "raw"
    _require([raw / f"{cfg.name}_{s}.txt" for s in ("A", "graph_indicator", "graph_labels")],
             f"TUDataset {cfg.name}", f"unzip {cfg.name}.zip from chrsmrrs.github.io/datasets into {raw.parent}")
    return TUDataset(str(_root(cfg)), cfg.name)


# ---------------------------------------------------------------------------- ingest / preprocess

def ingest(cfg: Config, out_dir: Path) -> dict:
    """Write the graph(s), labels and the fixed split with a checksum manifest."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.task == "node":
        split = None
        typed = None
        if cfg.source == "sbm":
            x, edge_index, y = stochastic_block_model(cfg.sbm, cfg.seed)
        elif cfg.source == "typed":
            typed = typed_graph(cfg.typed, cfg.seed)
            x, edge_index, y = typed["x"], typed["edge_index"], typed["y"]
        else:
            if cfg.source == "karate":
                from torch_geometric.datasets import KarateClub
                data = KarateClub()[0]
            else:
                data = load_planetoid(cfg)
            x, y = data.x.numpy().astype(np.float32), data.y.numpy().astype(np.int64)
            edge_index = undirected(data.edge_index.numpy(), len(y))
            if cfg.split == "public":
                split = {k: np.flatnonzero(getattr(data, f"{k}_mask").numpy()) for k in SPLITS}
        labelled = np.flatnonzero(y >= 0)  # a typed graph labels its papers only (they come first)
        split = split or {k: labelled[v] for k, v in
                          stratified_split(y[labelled], cfg.val_fraction, cfg.test_fraction, cfg.seed).items()}
        np.savez(out_dir / GRAPH, x=x, edge_index=edge_index, y=y,
                 **({k: typed[k] for k in ("node_type", "edge_type")} if typed else {}))
        num_classes, count = int(y.max()) + 1, len(labelled)
        extra = {"num_nodes": len(y), "num_edges": int(edge_index.shape[1]), "homophily": homophily(edge_index, y)}
        if typed:
            extra.update(node_types=list(NODE_TYPES), edge_types=[list(t) for t in EDGE_TYPES])
    else:
        if cfg.source == "families":
            graphs = random_graph_families(cfg.families, cfg.seed)
        else:
            graphs = [(g.x.numpy().astype(np.float32) if g.x is not None else np.ones((g.num_nodes, 1), np.float32),
                       undirected(g.edge_index.numpy(), g.num_nodes), int(g.y)) for g in load_tu(cfg)]
        y = np.array([g[2] for g in graphs], dtype=np.int64)
        split = stratified_split(y, cfg.val_fraction, cfg.test_fraction, cfg.seed)
        node_ptr = np.cumsum([0] + [len(g[0]) for g in graphs])
        edge_ptr = np.cumsum([0] + [g[1].shape[1] for g in graphs])
        np.savez(out_dir / "graphs.npz", x=np.concatenate([g[0] for g in graphs]),
                 edge_index=np.concatenate([g[1] for g in graphs], axis=1), node_ptr=node_ptr, edge_ptr=edge_ptr, y=y)
        num_classes, count = int(y.max()) + 1, len(y)
        extra = {"num_graphs": count, "mean_nodes": float(np.diff(node_ptr).mean()),
                 "mean_degree": float(np.diff(edge_ptr).sum() / node_ptr[-1])}
    np.savez(out_dir / "split.npz", **split)
    return write_manifest(out_dir, {
        "dataset": "graphs", "source": cfg.source, "name": cfg.name, "task": cfg.task,
        "num_samples": count, "num_classes": num_classes,
        "split_sizes": {k: int(len(v)) for k, v in split.items()}, **extra})


def _class_counts(labels: np.ndarray) -> dict[str, int]:
    classes, counts = np.unique(labels, return_counts=True)
    return {str(int(c)): int(n) for c, n in zip(classes, counts)}


def preprocess(cfg: Config, raw_dir: Path, out_dir: Path, manifest: dict) -> dict:
    """Node task: shards of seed nodes and the graph as ``graph.npz``; graph task: shards of graphs."""
    with np.load(raw_dir / "split.npz") as f:
        split = {k: f[k] for k in SPLITS}
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {"dataset": "graphs", "task": manifest["task"], "num_classes": manifest["num_classes"],
            "raw_manifest_sha256": {k: v["sha256"] for k, v in manifest["files"].items()}}
    if manifest["task"] == "node":
        with np.load(raw_dir / GRAPH) as f:
            arrays = {k: f[k] for k in f.files}
        x, edge_index, y = arrays["x"], arrays["edge_index"], arrays["y"]
        np.savez(out_dir / GRAPH, **arrays)
        meta.update(graph={"file": GRAPH, "sha256": sha256(out_dir / GRAPH)}, num_features=int(x.shape[1]),
                    num_nodes=int(len(y)), num_edges=int(edge_index.shape[1]),
                    homophily=homophily(edge_index, y))
        if "node_types" in manifest:  # a typed graph: its type names, in the order of the ids
            meta.update(node_types=manifest["node_types"], edge_types=manifest["edge_types"])
        columns = {k: {"node.cls": idx, "target.cls": y[idx]} for k, idx in split.items()}
        labels = {k: y[idx] for k, idx in split.items()}
    else:
        with np.load(raw_dir / "graphs.npz") as f:
            x, edge_index, node_ptr, edge_ptr, y = (f[k] for k in ("x", "edge_index", "node_ptr", "edge_ptr", "y"))
        graph_x = [x[node_ptr[i]:node_ptr[i + 1]] for i in range(len(y))]
        graph_ei = [edge_index[:, edge_ptr[i]:edge_ptr[i + 1]] for i in range(len(y))]
        meta.update(num_features=int(x.shape[1]), num_graphs=int(len(y)),
                    mean_nodes=float(np.diff(node_ptr).mean()))
        columns = {k: {"x.npy": [graph_x[i] for i in idx], "edge_index.npy": [graph_ei[i] for i in idx],
                       "target.cls": y[idx]} for k, idx in split.items()}
        labels = {k: y[idx] for k, idx in split.items()}
    return write_shards(out_dir, columns, cfg.samples_per_shard, meta=meta,
                        split_meta={k: {"class_counts": _class_counts(v)} for k, v in labels.items()})


# ---------------------------------------------------------------------------- batching

@functools.lru_cache(maxsize=4)
def load_graph(path: str, expected_sha256: str) -> dict[str, torch.Tensor]:
    """The node task's graph asset as tensors, checked against stats.json; cached per process."""
    fix = rebuild_hint(Path(path).parent)
    if not Path(path).exists():
        raise DataError(f"{path}: graph asset not found; {fix}")
    if sha256(Path(path)) != expected_sha256:
        raise DataError(f"{path}: sha256 differs from stats.json (corrupt or changed); {fix}")
    with np.load(path) as f:
        graph = {k: torch.from_numpy(f[k]) for k in ("x", "edge_index", "y", "node_type", "edge_type") if k in f.files}
    order = torch.argsort(graph["edge_index"][1] * len(graph["y"]) + graph["edge_index"][0])
    graph["edge_index"] = graph["edge_index"][:, order]  # sorted by target: a CSR of incoming edges
    if "edge_type" in graph:
        graph["edge_type"] = graph["edge_type"][order]
    graph["rowptr"] = torch.cat([torch.zeros(1, dtype=torch.long),
                                 torch.bincount(graph["edge_index"][1], minlength=len(graph["y"])).cumsum(0)])
    return graph


def sample_neighbors(rowptr: torch.Tensor, sources: torch.Tensor, seeds: torch.Tensor, fanout: Sequence[int],
                     generator: torch.Generator | None = None,
                     edge_ids: bool = False) -> tuple[torch.Tensor, ...]:
    """The seeds' sampled L-hop computation graph, as torch-geometric's NeighborLoader samples it.

    Hop ``l`` draws up to ``fanout[l]`` incoming neighbours (without replacement; -1 = all)
    of each node first reached at hop ``l - 1``. Returns ``(n_id, edge_index)``: the global
    ids of the subgraph's nodes (seeds first, in order) and its sampled edges in local ids;
    with ``edge_ids``, also each sampled edge's position in ``sources`` (for its relation).
    ``rowptr``/``sources`` are the CSR of incoming edges (``sources[rowptr[v]:rowptr[v+1]]``
    are the sources of edges into ``v``).
    """
    num_nodes = len(rowptr) - 1
    local = torch.full((num_nodes,), -1, dtype=torch.long)
    local[seeds] = torch.arange(len(seeds))
    n_id, frontier, src_parts, dst_parts, id_parts = [seeds], seeds, [], [], []
    for k in fanout:
        start, deg = rowptr[frontier], rowptr[frontier + 1] - rowptr[frontier]
        total = int(deg.sum())
        seg = torch.repeat_interleave(torch.arange(len(frontier)), deg)
        first = torch.cumsum(deg, 0) - deg  # position of each segment's first candidate
        cand = torch.arange(total) - first[seg]  # offset within the node's neighbour list
        if k >= 0 and bool((deg > k).any()):
            keys = torch.rand(total, generator=generator, dtype=torch.float64)
            order = torch.argsort(seg.double() + keys)  # by node, then by a random key
            keep = order[(torch.arange(total) - first[seg[order]]) < k]
            seg, cand = seg[keep], cand[keep]
        position = start[seg] + cand
        src = sources[position]
        dst = frontier[seg]
        id_parts.append(position)
        new = torch.unique(src[local[src] < 0])
        local[new] = torch.arange(len(new)) + sum(len(p) for p in n_id)
        n_id.append(new)
        src_parts.append(src)
        dst_parts.append(dst)
        frontier = new
    edge_index = torch.stack([local[torch.cat(src_parts)], local[torch.cat(dst_parts)]]) if src_parts else \
        torch.zeros(2, 0, dtype=torch.long)
    if edge_ids:
        return torch.cat(n_id), edge_index, torch.cat(id_parts) if id_parts else torch.zeros(0, dtype=torch.long)
    return torch.cat(n_id), edge_index


class NodeBatcher:
    """Seed nodes -> ``(x, edge_index, index, target)``: the whole graph (``fanout`` empty) or the
    seeds' sampled neighbourhood (``fanout`` one entry per hop, over all relations of a typed
    graph at once); a typed graph's batches add ``(node_type, edge_type)``."""

    def __init__(self, shard_dir: Path, stats: dict, fanout: Sequence[int] | None = None):
        self.graph = load_graph(str(Path(shard_dir) / stats["graph"]["file"]), stats["graph"]["sha256"])
        self.fanout = list(fanout or [])

    def __call__(self, samples: list[tuple], generator: torch.Generator | None = None) -> tuple:
        seeds = torch.tensor([s[0] for s in samples], dtype=torch.long)
        target = torch.tensor([s[1] for s in samples], dtype=torch.long)
        g = self.graph
        typed = "node_type" in g
        if not self.fanout:
            return (g["x"], g["edge_index"], seeds, target) + ((g["node_type"], g["edge_type"]) if typed else ())
        n_id, edge_index, e_id = sample_neighbors(g["rowptr"], g["edge_index"][0], seeds, self.fanout, generator,
                                                  edge_ids=True)
        batch = (g["x"][n_id], edge_index, torch.arange(len(seeds)), target)
        return batch + ((g["node_type"][n_id], g["edge_type"][e_id]) if typed else ())


def collate_graphs(samples: list[tuple], generator: torch.Generator | None = None) -> tuple:
    """Graphs ``(x, edge_index, target)`` -> one disjoint graph ``(x, edge_index, index, target)``."""
    sizes = torch.tensor([len(s[0]) for s in samples])
    offsets = torch.cumsum(sizes, 0) - sizes
    x = torch.cat([torch.as_tensor(s[0]) for s in samples])
    edge_index = torch.cat([torch.as_tensor(s[1]).long() + o for s, o in zip(samples, offsets.tolist())], dim=1)
    index = torch.repeat_interleave(torch.arange(len(samples)), sizes)
    return x, edge_index, index, torch.tensor([int(s[2]) for s in samples], dtype=torch.long)


class GraphBatcher(Batcher):
    """Batches of a graph dataset: ``(x, edge_index, index, target)`` from seed nodes (a node
    task: :class:`NodeBatcher`) or from whole small graphs (a graph task: :func:`collate_graphs`)."""

    def __init__(self, make):
        self.make = make

    def batch(self, samples: list[tuple], rng: random.Random, generator: torch.Generator) -> tuple:
        return self.make(samples, generator)


def batcher(stats: dict, shard_dir: Path, options: BatchOptions) -> GraphBatcher:
    """How the reader batches these shards, by the task ``stats.json`` names (``options.fanout``:
    a node task's neighbours sampled per hop)."""
    task = stats.get("task")
    if task == "node":
        return GraphBatcher(NodeBatcher(shard_dir, stats, options.fanout))
    if task == "graph":
        return GraphBatcher(collate_graphs)
    raise DataError(f"{Path(shard_dir) / 'stats.json'}: graph task {task!r} is neither 'node' nor 'graph'; "
                    f"re-run preprocess")
