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
