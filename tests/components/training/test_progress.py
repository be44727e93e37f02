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


def test_the_hook_pickles_for_ray_workers_when_stdout_is_a_log_file(tmp_path, monkeypatch):
    import pickle
    import sys

    with open(tmp_path / "stage.log", "a") as log:  # what dvc or CI redirects a stage's output to
        monkeypatch.setattr(sys, "stdout", log)
        progress = Progress(3)
        progress.on_epoch({"epoch": 0, "step": 5, "train_loss": 1.0, "epoch_time_s": 0.1}, None)
        copy = pickle.loads(pickle.dumps(progress))  # a worker prints to its own stdout
        copy.on_epoch({"epoch": 1, "step": 10, "train_loss": 0.5, "epoch_time_s": 0.1}, None)
    lines = (tmp_path / "stage.log").read_text().splitlines()
    assert [line.split(":")[0] for line in lines] == ["  epoch 1/3", "  epoch 2/3"]
