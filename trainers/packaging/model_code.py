"""The code of the logged model: MLflow runs this file to build the model object."""

from mlflow.models import set_model

from trainers.packaging import PipelineModel

set_model(PipelineModel())
