"""Entry file for MLflow's models-from-code: defines the served model without pickling it."""

from mlflow.models import set_model

from components.serving import FamilyModel

set_model(FamilyModel())
