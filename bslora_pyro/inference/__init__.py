"""SVI, the exact ELBO, the posterior predictive, export and accounting."""

from bslora_pyro.inference.elbo import ELBOTerms, ExactELBO
from bslora_pyro.inference.predictive import Predictions, predict
from bslora_pyro.inference.svi import SVITrainer, TrainConfig, TrainingError

__all__ = [
    "ELBOTerms",
    "ExactELBO",
    "Predictions",
    "SVITrainer",
    "TrainConfig",
    "TrainingError",
    "predict",
]
