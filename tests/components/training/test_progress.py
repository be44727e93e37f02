import io

from components.training.progress import Progress, interactive


def run(progress: Progress, epochs: int = 2, per_epoch: int = 50) -> str:
    step = 0
    for epoch in range(epochs):
        for done in range(1, per_epoch + 1):
            step += 1
            progress.on_batch(epoch, done, per_epoch, step, epochs * per_epoch)
        progress.on_epoch({"epoch": epoch, "step": step, "train_loss": 0.5, "val_accuracy": 0.9,
                           "epoch_time_s": 0.01}, None)
    return progress.stream.getvalue()


def test_a_terminal_gets_a_bar_redrawn_in_place_and_a_line_per_epoch():
    out = run(Progress(2, stream=io.StringIO(), tty=True))
    lines = out.split("\n")
    assert len(lines) == 3 and lines[-1] == ""  # one finished line per epoch, the bar never adds lines
    assert "\r  epoch 1/2 [" in out and "50/50" in out and "steps/s, eta" in out
    assert "epoch 2/2: train_loss 0.5, val_accuracy 0.9; eta 0s" in lines[1]


def test_ci_and_pipes_get_periodic_plain_lines_not_a_bar(monkeypatch):
    quiet = run(Progress(2, stream=io.StringIO(), tty=False, every_s=3600))
    assert "\r" not in quiet and quiet.count("\n") == 2  # only the epoch lines within the period
    chatty = run(Progress(2, stream=io.StringIO(), tty=False, every_s=0))
    assert "\r" not in chatty and "epoch 1/2: step 25/50 (50%)" in chatty
    monkeypatch.setenv("CI", "true")

    class Tty(io.StringIO):
        def isatty(self):
            return True
    assert not interactive(Tty())
    monkeypatch.delenv("CI")
    assert interactive(Tty()) and not interactive(io.StringIO())
