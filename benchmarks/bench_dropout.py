"""Benchmark: the CPU dropout of ``components/models/dropout.py`` against torch's, alone and in the
embedded Transformer's training step (its config from params.yaml, a batch of the digits-translation size).

    python benchmarks/bench_dropout.py            # about 30 s on 2 cores

Run nothing else meanwhile.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from components.models import dropout as ours  # noqa: E402
from components.models import transformer  # noqa: E402
from components.params import load_params, train_config  # noqa: E402


def per_call_ms(fn, repeats: int) -> float:
    for _ in range(3):
        fn()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats * 1e3


def torchs_attention(q, k, v, mask=None, causal=False, dropout_p=0.0):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=causal)


def step_ms(use_torchs: bool, cfg, batch, repeats: int) -> float:
    torch.manual_seed(0)
    model = transformer.Transformer(cfg).train()
    if use_torchs:
        for module in list(model.modules()):
            for name, child in list(module.named_children()):
                if isinstance(child, ours.Dropout):
                    setattr(module, name, nn.Dropout(child.p))
    opt = torch.optim.Adam(model.parameters(), 1e-4)
    saved = transformer.attention
    transformer.attention = torchs_attention if use_torchs else ours.attention
    try:
        def step():
            transformer.training_step(model, batch, cfg, 0.1)["loss"].backward()
            opt.step()
            opt.zero_grad()
        return per_call_ms(step, repeats)
    finally:
        transformer.attention = saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    x = torch.randn(64 * 30, 512, requires_grad=True)
    grad = torch.randn_like(x)
    for name, fn in (("F.dropout", lambda: F.dropout(x, 0.1, True).backward(grad)),
                     ("dropout.dropout", lambda: ours.dropout(x, 0.1).backward(grad))):
        print(f"{name:18s} forward+backward of {tuple(x.shape)}: {per_call_ms(fn, args.repeats * 5):7.2f} ms")
    params = load_params(REPO / "params.yaml")
    cfg = train_config(params, "transformer").model
    cfg.vocab_size = 40
    torch.manual_seed(0)
    batch = (torch.randint(5, 40, (64, 28)), torch.randint(5, 40, (64, 30)))
    torchs = step_ms(True, cfg, batch, args.repeats)
    mine = step_ms(False, cfg, batch, args.repeats)
    print(f"Transformer training step (batch 64 x 28/30 tokens): torch's dropout and attention {torchs:.1f} ms, "
          f"components/models/dropout.py {mine:.1f} ms: {torchs / mine:.2f}x")


if __name__ == "__main__":
    main()
