"""No training step asks the device a question the host must wait for, checked on the CPU.

On a GPU, a step that reads a value (``.item()``, ``int(t.max())``, ``bool(t)``) or makes a shape
that depends on values (a boolean mask, ``nonzero``, ``unique``) waits for every queued kernel
before it can go on. ``tests/components/training/test_gpu.py`` finds those with CUDA's sync debug
mode, on a GPU only. This test runs in CI: it records every ATen operator four steps of each family
dispatch and flags those that need a value on the host. Copies between host and device are
invisible on a CPU; the GPU test covers them.
"""

from __future__ import annotations

import traceback
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tests.conftest import ALGOS, dataset_shards, first_steps

aten = torch.ops.aten
ROOT = str(Path(__file__).resolve().parents[3])

# Operators whose result the host must read, or whose output size depends on the values.
READS = {aten._local_scalar_dense.default, aten.is_nonzero.default, aten.equal.default,
         aten.nonzero.default, aten.nonzero_static.default, aten.masked_select.default,
         aten._unique2.default, aten.unique_consecutive.default, aten.unique_dim.default,
         aten.bincount.default, aten.repeat_interleave.Tensor}
READS.discard(aten.nonzero_static.default)  # a static size: no read


def _needs_host(func, args, kwargs) -> bool:
    if func in READS:
        return not (func is aten.repeat_interleave.Tensor and kwargs.get("output_size") is not None)
    if func in (aten.index.Tensor, aten.index_put.default, aten.index_put_.default, aten._index_put_impl_.default):
        return any(i is not None and i.dtype == torch.bool for i in args[1])  # a boolean mask
    return False


class HostReads(TorchDispatchMode):
    """Counts each operator that needs a value on the host, by the project's frames that asked."""

    def __init__(self):
        super().__init__()
        self.found: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _needs_host(func, args, kwargs):
            stack = traceback.extract_stack()[:-1]
            # The optimizers keep their step counts on the host by design (torch reads them there).
            if not any("/torch/optim/" in f.filename for f in stack[-6:]):
                frames = [f for f in stack if f.filename.startswith(ROOT) and "/tests/" not in f.filename]
                where = " <- ".join(f"{Path(f.filename).relative_to(ROOT)}:{f.lineno} {f.line}"
                                    for f in reversed(frames[-3:]))
                self.found[f"{func} at {where or 'the test itself'}"] += 1
        return func(*args, **kwargs)


@pytest.fixture(scope="module")
def shards(repo_params, tmp_path_factory):
    made: dict[str, Path] = {}

    def get(dataset: str) -> Path:
        if dataset not in made:
            made[dataset] = dataset_shards(repo_params, dataset, tmp_path_factory.mktemp(dataset))
        return made[dataset]

    return get


@pytest.mark.parametrize("algo", ALGOS)
def test_a_training_step_reads_nothing_back_from_the_device(algo, repo_params, shards):
    step, meter, batches = first_steps(repo_params, algo, shards(repo_params["algorithms"][algo]["dataset"]), "cpu")
    reads = HostReads()
    with reads:
        for i, batch in enumerate(batches[1:], start=1):
            meter.add(step(batch, i))
    found = [f"{n} x {where}" for where, n in reads.found.most_common()]
    assert not found, f"{algo}: {len(found)} read(s) the host waits for in 4 steps:\n" + "\n".join(found)
    assert meter.totals(len(batches), 0, {})[2].item() > 0


def test_the_check_sees_a_read_and_a_mask():
    """What the check catches: a scalar read and a boolean mask, not a sum kept on the device."""
    x = torch.arange(6.0)
    with HostReads() as reads:
        total = x.sum()
        _ = float(total)
        _ = x[x > 2]
    assert len(reads.found) == 2 and all("the test itself" in k for k in reads.found)
