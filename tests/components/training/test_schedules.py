import math

import pytest
import torch

from components.config import ScheduleConfig
from components.training import schedules as S

LR, T = 0.1, 100


def torch_lrs(make, steps=T, lr=LR):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=lr)
    sched = make(opt)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("ours, make", [
    (lambda s: S.step_decay(s, LR, 30, 0.1), lambda o: torch.optim.lr_scheduler.StepLR(o, 30, 0.1)),
    (lambda s: S.multistep(s, LR, [40, 70], 0.2), lambda o: torch.optim.lr_scheduler.MultiStepLR(o, [40, 70], 0.2)),
    (lambda s: S.exponential(s, LR, 0.97), lambda o: torch.optim.lr_scheduler.ExponentialLR(o, 0.97)),
    (lambda s: S.cosine(s, LR, T, 0, 0.001), lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T, 0.001)),
    (lambda s: S.onecycle(s, LR, T, 0.3, 25, 1e4),
     lambda o: torch.optim.lr_scheduler.OneCycleLR(o, LR, total_steps=T, pct_start=0.3, anneal_strategy="cos",
                                                   cycle_momentum=False, div_factor=25, final_div_factor=1e4)),
])
def test_matches_torch_lr_scheduler(ours, make):
    expected = torch_lrs(make)
    assert [ours(s) for s in range(T)] == pytest.approx(expected, rel=1e-6, abs=1e-12)


def test_cosine_formula_with_warmup():
    w, lo = 10, 0.001
    for s in range(T):
        got = S.cosine(s, LR, T, w, lo)
        if s < w:
            assert got == pytest.approx(LR * (s + 1) / (w + 1))
        else:
            assert got == pytest.approx(lo + (LR - lo) * (1 + math.cos(math.pi * (s - w) / (T - w))) / 2)
    assert S.cosine(w, LR, T, w, lo) == pytest.approx(LR)


def test_inverse_sqrt_is_the_transformer_formula():
    d_model, warmup = 512, 4000
    for s in (0, 1, 100, 3999, 4000, 10_000, 100_000):
        n = s + 1
        assert S.inverse_sqrt(s, d_model, warmup) == pytest.approx(d_model ** -0.5 * min(n ** -0.5, n * warmup ** -1.5))
    peak = max(S.inverse_sqrt(s, d_model, warmup) for s in range(8000))
    assert peak == pytest.approx(d_model ** -0.5 * warmup ** -0.5)
    assert S.inverse_sqrt(warmup - 1, d_model, warmup) == pytest.approx(peak)


def test_linear_warmup_then_decay():
    assert S.linear(0, LR, T, 10) == pytest.approx(LR / 11)
    assert S.linear(10, LR, T, 10) == pytest.approx(LR)
    assert S.linear(55, LR, T, 10) == pytest.approx(LR / 2)
    assert S.linear(T, LR, T, 10) == pytest.approx(0.0)


@pytest.mark.parametrize("name", ["constant", "step", "multistep", "exponential", "cosine", "linear",
                                  "inverse_sqrt", "onecycle"])
def test_built_schedules_peak_at_lr_and_stay_positive(name):
    fn = S.build(ScheduleConfig(name=name, warmup=0.1), LR, T)
    values = [fn(s) for s in range(T)]
    assert max(values) == pytest.approx(LR, rel=1e-6)
    assert all(v >= 0 for v in values)
    if name != "onecycle":  # one-cycle's rise is its own warm-up
        assert values[0] < values[10]


def test_inverse_sqrt_rescaled_to_peak_lr_keeps_its_shape():
    fn = S.build(ScheduleConfig(name="inverse_sqrt", warmup=0.1), LR, T)
    # after the peak at step 9 (warm-up of 10 steps), lr falls as 1/sqrt(step + 1)
    assert fn(39) / fn(9) == pytest.approx(math.sqrt(10 / 40))
