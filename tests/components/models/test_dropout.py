"""The CPU dropout and attention of components/models/dropout.py against torch's own."""

import pytest
import torch
import torch.nn.functional as F

from components.models.dropout import LEVELS, Dropout, attention, dropout


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_keeps_1_minus_p_and_the_mean(p):
    torch.manual_seed(0)
    y = dropout(torch.ones(400_000), p)
    kept = (y > 0).double().mean().item()
    assert abs(kept - (1 - p)) < 4 * (p * (1 - p) / 400_000) ** 0.5  # 4 standard errors
    assert abs(y.double().mean().item() - 1) < 0.01  # inverted dropout: the mean is kept
    scale = LEVELS / (LEVELS - round(p * LEVELS))
    assert torch.all((y == 0) | (y == scale))


def test_dropout_gradient_is_the_mask_and_draws_repeat_under_a_seed():
    x = torch.randn(3, 1000, requires_grad=True)
    torch.manual_seed(1)
    y = dropout(x, 0.2)
    y.backward(torch.ones_like(y))
    scale = LEVELS / (LEVELS - round(0.2 * LEVELS))
    assert torch.equal(x.grad, torch.where(y != 0, scale, 0.0))  # d y / d x = mask * scale
    torch.manual_seed(1)
    assert torch.equal(dropout(x, 0.2), y)
    assert not torch.equal(dropout(x, 0.2), y)  # the generator moved on


def test_dropout_is_the_identity_where_torchs_would_be():
    x = torch.randn(5, 7)
    assert dropout(x, 0.3, training=False) is x and dropout(x, 0.0) is x
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))
    module = Dropout(0.25).eval()
    assert module(x) is x and module.state_dict() == {} and "p=0.25" in repr(module)
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        Dropout(1.5)


def _reference(q, k, v, mask, causal, weights_dropped=None):
    scores = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5
    if causal:
        scores = scores.masked_fill(torch.ones(scores.shape[-2:], dtype=torch.bool).triu(1), float("-inf"))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    w = scores.softmax(-1)
    return (w if weights_dropped is None else w * weights_dropped) @ v


@pytest.mark.parametrize("causal", [False, True])
def test_attention_matches_torchs_kernel_and_drops_weights_only(causal):
    torch.manual_seed(2)
    q, k, v = (torch.randn(2, 4, 6, 8) for _ in range(3))
    mask = torch.ones(2, 1, 1, 6, dtype=torch.bool)
    mask[0, ..., 4:] = False  # the first sequence's last two keys are padding
    # the formula the CPU path computes is torch's attention without dropout...
    ref = _reference(q, k, v, mask, causal)
    torch.testing.assert_close(ref, F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal))
    torch.testing.assert_close(attention(q, k, v, mask, causal), ref)
    # ...and with dropout the same weights times the mask that dropout() draws from the same state
    torch.manual_seed(3)
    out = attention(q, k, v, mask, causal, dropout_p=0.3)
    torch.manual_seed(3)
    drawn = dropout(torch.ones(2, 4, 6, 6), 0.3)
    torch.testing.assert_close(out, _reference(q, k, v, mask, causal, drawn))
    assert not torch.allclose(out, ref)
