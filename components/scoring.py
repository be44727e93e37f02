"""Batch scoring on Ray Data: a registered model over an image or caption shard set, as Parquet.

The shard set streams through Ray Data: one row per shard (its ``stats.json`` entry), expanded
into samples by the project's own reader (sizes, sha256 and counts checked) and decoded by the
evaluation transform into uint8 pixels (4x fewer bytes than floats between processes). Actors
score batches, each loading the model once (a GPU each when asked); rows are written as Parquet.
Ray Data's streaming executor bounds memory by its buffers, not by the shard set.

What each family writes beside ``key`` and ``shard`` (and ``label`` where the shards have one):

- ``resnet`` (classifier): ``prediction`` and its ``probability``;
- ``clip``: ``embedding``, the L2-normalised image embedding, which :func:`query` ranks by text.

The model is the pyfunc that register logs (``models:/resnet@champion``); actors rebuild the
network from its config and safetensors weights, as :func:`components.serving.load_module` does.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from components.data import transforms
from components.data.manifest import DataError
from components.data.shards import iter_shard, read_stats

TASKS = {"resnet": "classify", "vgg": "classify", "clip": "embed"}  # family -> what its scoring writes


def task_of(family: str) -> str:
    if family not in TASKS:
        raise DataError(f"batch scoring covers the families {sorted(TASKS)} (image classification, image "
                        f"embeddings); {family!r} is not one of them: score it with its pyfunc's predict")
    return TASKS[family]


def resolve_version(model_uri: str):
    """The registry version ``models:/<name>@<alias>`` or ``models:/<name>/<n>`` points at now, or
    None for any other URI (``runs:/...``, a path). A missing name, alias or version is a one-line
    error naming the command that registers it."""
    import mlflow
    from mlflow import MlflowClient

    if not model_uri.startswith("models:/"):
        return None
    name, _, rest = model_uri[len("models:/"):].partition("@")
    client = MlflowClient()
    try:
        if rest:
            return client.get_model_version_by_alias(name, rest)
        name, _, number = name.partition("/")
        return client.get_model_version(name, number)
    except mlflow.exceptions.MlflowException:
        raise FileNotFoundError(f"{model_uri}: no such model version in the registry at {mlflow.get_registry_uri()}; "
                                f"register one first (`dvc repro register-{name.split('/')[0]}`)") from None


def shard_items(shard_dir: Path, split: str, stats: dict | None = None) -> list[dict[str, Any]]:
    """One item per shard of ``split``: its path and the size, sha256 and count the reader checks
    (``stats``: the folder's stats.json, when the caller has read it already)."""
    stats = stats or read_stats(shard_dir)
    if "image" not in stats:
        raise DataError(f"{shard_dir}: holds no images (stats.json has no 'image' entry); batch scoring reads "
                        f"image or caption shards")
    if split not in stats["splits"]:
        raise DataError(f"{shard_dir}: has no split {split!r}; choose one of {sorted(stats['splits'])}")
    return [{"path": str(Path(shard_dir) / e["file"]), "bytes": e["bytes"], "sha256": e["sha256"],
             "samples": e["samples"]} for e in stats["splits"][split]["shards"]]


def read_shards(items: dict[str, np.ndarray], image: dict, fields: list[str]) -> dict[str, np.ndarray]:
    """Ray Data batch of shard items -> their samples as columns: ``key``, ``shard``, uint8
    ``image`` (N, C, S, S) decoded as evaluation decodes it, and ``label`` when the shards'
    second field is a class. A block holds whole shards, about ``BLOCK_BYTES`` of pixels."""
    transform = transforms.for_stats({"image": image}, train=False, uint8=True)
    rng = random.Random(0)  # the evaluation transform draws nothing
    labelled = len(fields) > 1 and fields[1].split(";")[0] == "cls"
    keys, shards, pixels, labels = [], [], [], []
    for i, path in enumerate(items["path"]):
        entry = {k: items[k][i] for k in ("bytes", "sha256", "samples")}
        path = Path(path)
        for key, sample in iter_shard(path, entry, fields, keys=True):
            x, *rest = transform(sample, rng)
            keys.append(key)
            shards.append(path.name)
            pixels.append(x.numpy())
            if labelled:
                labels.append(int(rest[0]))
    out = {"key": np.array(keys), "shard": np.array(shards), "image": np.stack(pixels)}
    if labelled:
        out["label"] = np.array(labels, dtype=np.int64)
    return out


BLOCK_BYTES = 64 << 20  # decoded pixels per read task, about: Ray Data's own target block size
MIN_READ_TASKS = 8  # at least this many (or one per shard) so that reading runs in parallel


def read_blocks(items: list[dict[str, Any]], image: dict) -> int:
    """How many read tasks share the shards: about ``BLOCK_BYTES`` of decoded pixels each (a task
    per tiny shard would cost more in Ray's task overhead than its reading), at least
    ``MIN_READ_TASKS``, at most one per shard."""
    size = int(image["augment"]["size"])
    pixels = sum(item["samples"] for item in items) * int(image["channels"]) * size * size
    return max(1, min(len(items), max(-(-pixels // BLOCK_BYTES), MIN_READ_TASKS)))


def family_of(served) -> str:
    """The family name of a loaded pyfunc's Python model (``resnet``, ``clip``...)."""
    return served.family.__name__.rsplit(".", 1)[-1]


def load_served(model_uri: str):
    """The pyfunc's Python model (family, config, network) of ``model_uri``; a version whose
    config this code cannot read (registered by older code) is a one-line error naming it."""
    import mlflow.pyfunc

    from components.config import ConfigError

    try:
        return mlflow.pyfunc.load_model(model_uri).unwrap_python_model()
    except ConfigError as exc:
        raise ConfigError(f"{model_uri}: its config does not load with this code ({exc}); it was registered by "
                          f"other code: score a version registered by this checkout's `dvc repro`") from None


class Scorer:
    """A Ray Data actor: loads the model once, then scores batches of rows."""

    def __init__(self, model_uri: str, tracking_uri: str, pixel_max: float, use_gpu: bool = False):
        import mlflow

        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
        served = load_served(model_uri)
        self.task = task_of(family_of(served))
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        self.model = served.model.to(self.device).eval()
        self.pixel_max = pixel_max

    @torch.no_grad()
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = torch.tensor(batch["image"]).to(self.device).float().div_(self.pixel_max)  # Ray's arrays are read-only
        out = {k: batch[k] for k in ("key", "shard", "label") if k in batch}
        if self.task == "classify":
            probs = torch.softmax(self.model(x).float(), dim=1)
            probability, prediction = probs.max(1)
            out["prediction"], out["probability"] = prediction.cpu().numpy(), probability.cpu().numpy()
        else:
            out["embedding"] = self.model.encode_image(x).float().cpu().numpy()
        return out


def score(model_uri: str, shard_dir: Path, split: str, out: str, *, tracking_uri: str, batch_size: int = 256,
          actors: int = 1, gpus_per_actor: float = 0.0) -> dict[str, Any]:
    """Score ``split`` of ``shard_dir`` with ``model_uri`` into Parquet files under ``out``.

    Returns a summary: rows, seconds, rows per second and, for a classifier on labelled shards,
    accuracy. Needs a connected Ray (``launch.init_ray``).
    """
    import pyarrow.dataset as pads
    import ray.data

    stats = read_stats(shard_dir)
    items = shard_items(shard_dir, split, stats)
    task_of(family_of(load_served(model_uri)))  # a model that cannot score fails here, not in every actor
    t0 = time.perf_counter()
    ds = ray.data.from_items(items, override_num_blocks=read_blocks(items, stats["image"]))
    # Reading and decoding run in tasks of their own, beside the actors. Ray Data fuses
    # operators whose remote arguments agree, and fused into the actor they would take turns
    # with the model; the actors' SPREAD placement (one model per node first, on a cluster)
    # is what keeps the two apart.
    ds = ds.map_batches(read_shards, batch_size=None, batch_format="numpy",
                        fn_kwargs={"image": stats["image"], "fields": list(stats["fields"])})
    ds = ds.map_batches(Scorer, batch_size=batch_size, batch_format="numpy",
                        compute=ray.data.ActorPoolStrategy(size=actors), num_gpus=gpus_per_actor or None,
                        scheduling_strategy="SPREAD",
                        fn_constructor_kwargs={"model_uri": model_uri, "tracking_uri": tracking_uri,
                                               "pixel_max": float(stats["image"]["pixel_max"]),
                                               "use_gpu": gpus_per_actor > 0})
    ds.write_parquet(out)
    seconds = time.perf_counter() - t0
    written = pads.dataset(out, format="parquet")
    columns = written.schema.names
    summary: dict[str, Any] = {"seconds": seconds, "columns": columns, "rows": written.count_rows()}
    if "prediction" in columns and "label" in columns:
        table = written.to_table(columns=["label", "prediction"])
        summary["accuracy"] = float((table["label"].to_numpy() == table["prediction"].to_numpy()).mean()) \
            if summary["rows"] else float("nan")
    summary["rows_per_s"] = summary["rows"] / max(seconds, 1e-9)
    return summary


def query(model_uri: str, scores: str, text: str, k: int = 5) -> list[dict[str, Any]]:
    """The ``k`` rows of a CLIP scoring's Parquet (``scores``) whose image embeddings are nearest
    ``text`` by cosine similarity, best first: ``key``, ``shard``, ``cosine`` (and ``label``)."""
    import pyarrow.dataset as pads

    served = load_served(model_uri)
    if task_of(family_of(served)) != "embed":
        raise DataError(f"{model_uri}: not an embedding model; text queries need a CLIP model")
    text_emb = served.family.predict(served.model, {"text": [text]}, served.cfg, mode="embed_text")[0]
    dataset = pads.dataset(scores, format="parquet")
    if "embedding" not in dataset.schema.names:
        raise DataError(f"{scores}: has no 'embedding' column; score the images with the CLIP model first")
    best: list[tuple[float, dict]] = []
    for batch in dataset.to_batches():  # a batch at a time: memory bounded by the batch, not the set
        emb = np.stack(batch.column("embedding").to_numpy(zero_copy_only=False)).astype(np.float32)
        cos = emb @ text_emb / np.maximum(np.linalg.norm(emb, axis=1) * np.linalg.norm(text_emb), 1e-12)
        rows = batch.to_pydict()
        for i in np.argsort(-cos)[:k]:
            best.append((float(cos[i]), {c: rows[c][i] for c in ("key", "shard", "label") if c in rows}))
        best = sorted(best, key=lambda r: -r[0])[:k]
    return [{**row, "cosine": c} for c, row in best]
