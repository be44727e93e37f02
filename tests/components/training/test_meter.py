"""The step meter: sums kept on the device, read every log_every steps, divergence found there."""

import math

import pytest
import torch

from components.training.meter import StepMeter, TrainingDiverged
from components.training.steps import StepResult


def run(losses, log_every=5):
    meter = StepMeter(torch.device("cpu"), "resnet", "lower train.resnet.lr")
    rows = []
    for i, loss in enumerate(losses):
        out = StepResult(torch.tensor(loss), torch.tensor(4), torch.tensor(3))
        meter.add(out)
        step = i + 1
        if step % log_every == 0 or step == 1:
            rows.append(meter.row(step, 0, {"lr": 0.1, "loss": out.loss, "grad_norm": torch.tensor(2.0)}))
    return meter, rows


def test_sums_equal_the_host_side_sums_and_rows_hold_floats():
    losses = [0.5 + 0.01 * i for i in range(12)]
    meter, rows = run(losses)
    loss_sum, correct, count = meter.totals(12, 0, {}).tolist()
    assert loss_sum == pytest.approx(sum(float(torch.tensor(x)) * 4 for x in losses), rel=1e-12)
    assert (correct, count) == (36, 48)
    assert [r["step"] for r in rows] == [1, 5, 10]
    assert rows[1] == {"step": 5, "epoch": 0, "lr": 0.1, "loss": pytest.approx(0.54), "grad_norm": 2.0}
    assert all(type(v) in (int, float) for r in rows for v in r.values())


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_non_finite_loss_stops_the_run_at_the_next_read_naming_the_steps(bad):
    losses = [0.5] * 12
    losses[6] = bad  # step 7; steps 8.. are finite again, as after a skipped batch: still caught
    with pytest.raises(TrainingDiverged, match=r"resnet: the loss became nan or inf between steps 6 and 10 "
                                               r"\(epoch 0, lr 0.1 at step 10\); lower train.resnet.lr"):
        run(losses)


def test_a_non_finite_value_in_a_row_stops_the_run():
    meter = StepMeter(torch.device("cpu"), "gan", "lower train.gan.lr")
    meter.add(StepResult(torch.tensor(1.0), 2))
    with pytest.raises(TrainingDiverged, match=r"gan: g_loss became nan at step 1"):
        meter.row(1, 0, {"lr": 0.1, "g_loss": torch.tensor(math.nan)})


def test_the_end_of_epoch_read_finds_what_no_row_saw():
    meter, _ = run([0.5] * 12)
    meter.add(StepResult(torch.tensor(math.inf), torch.tensor(4)))
    with pytest.raises(TrainingDiverged, match=r"between steps 11 and 13"):
        meter.totals(13, 0, {"lr": 0.1})
