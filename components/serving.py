"""The pyfunc model every registered family is served as.

MLflow loads it "from code" (``mlflow.pyfunc.log_model(python_model=<file>)``): the model
is this class plus its weights in safetensors, so loading runs no unpickling. The model's
artifact folder carries ``config.json`` naming the family and its config.
"""

from __future__ import annotations

import mlflow.pyfunc


class FamilyModel(mlflow.pyfunc.PythonModel):
    """``predict`` delegates to the family's own ``predict`` (which validates its input)."""

    def load_context(self, context) -> None:
        from components.models import get_family
        from components.params import train_config_from_dict
        from components.training.checkpoint import load_exported

        state, meta = load_exported(context.artifacts["weights"])
        name = meta.get("family", meta["algo"])
        self.family = get_family(name)
        self.cfg = train_config_from_dict(name, meta["train"]).model
        self.model = self.family.build(self.cfg)
        self.model.load_state_dict(state)
        self.model.eval()

    def predict(self, context, model_input, params=None):  # no type hints: MLflow would infer a schema from them
        # ``params`` are the family's inference options declared in its signature (e.g. beam_size).
        from mlflow.exceptions import MlflowException

        try:
            return self.family.predict(self.model, model_input, self.cfg, **(params or {}))
        except (ValueError, TypeError) as exc:
            # The family's check of its input (shape, dtype, ids...): MLflow's scoring server
            # answers 400 with this message, where any other error becomes a generic one
            # with a traceback. In-process callers get the same message.
            raise MlflowException.invalid_parameter_value(str(exc)) from None


def load_module(model_uri: str):
    """The trained ``torch.nn.Module`` of a registered version (``models:/resnet@champion``), in
    eval mode: rebuilt by its family from the version's config and safetensors weights, so no
    pickle is loaded (MLflow's pytorch flavor would save the module with ``torch.save``, which
    loads by unpickling). Call ``.train()`` on it to fine-tune. Without this project installed,
    ``mlflow.pyfunc.load_model(uri).unwrap_python_model().model`` is the same module."""
    import mlflow.pyfunc

    return mlflow.pyfunc.load_model(model_uri).unwrap_python_model().model
