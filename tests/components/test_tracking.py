"""The registry's champion/challenger rule, on a real MLflow store (SQLite in a temp folder)."""

from __future__ import annotations

import mlflow
import pytest

from components import tracking


class Constant(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)  # artifacts land in the temp folder
    tracking.configure(tmp_path)
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(name="model", python_model=Constant())
    return info.model_uri


@pytest.mark.parametrize("mode, values, aliases", [
    ("min", [1.1796489844244178, 1.1796489844244178, 1.0], ["champion", "challenger", "champion"]),
    ("max", [0.9888475836431226, 0.9888475836431226, 0.95], ["champion", "challenger", "challenger"]),
])
def test_champion_moves_only_to_a_strictly_better_version(store, mode, values, aliases):
    got = []
    for value in values:
        _, alias, _ = tracking.register(store, "m", tags=tracking.metric_tags({"fid": value}), description="card",
                                        metric="fid", value=value, mode=mode)
        got.append(alias)
    assert got == aliases
    champion = tracking.champion_version("m")
    best = min(values) if mode == "min" else max(values)
    assert float(champion.tags["test_fid"]) == best


def test_a_resumed_run_logs_each_step_and_epoch_exactly_once(store):
    client = tracking.MlflowClient()
    run_id = client.create_run(client.create_experiment("resume")).info.run_id
    hook = tracking.MlflowHook(mlflow.get_tracking_uri(), run_id)
    steps = [{"step": s, "epoch": s // 10, "loss": 1.0 / s, "lr": 0.1} for s in range(1, 31)]
    epochs = [{"epoch": e, "step": 10 * (e + 1), "train_loss": 1.0 / (e + 1)} for e in range(3)]
    # Epoch 0 logged; the worker died after epoch 1's checkpoint and before the hook logged epoch 1.
    hook.on_step(steps[:10])
    hook.on_epoch(epochs[0], None)
    hook.on_resume(steps[:20], epochs[:2])  # the run directory, truncated at the checkpoint of epoch 1
    hook.on_step(steps[20:])
    hook.on_epoch(epochs[2], None)
    hook.on_end()  # rows are queued to MLflow's logging thread; the loop calls on_end last
    for key, want in (("step/loss", list(range(1, 31))), ("step/lr", list(range(1, 31))), ("train_loss", [0, 1, 2])):
        assert sorted(m.step for m in client.get_metric_history(run_id, key)) == want, key
    hook.on_resume(steps, epochs)  # nothing missing: nothing logged again
    assert len(client.get_metric_history(run_id, "step/loss")) == 30
