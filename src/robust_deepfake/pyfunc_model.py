"""MLflow models-from-code entry point: logged as the model's code instead of a pickle.

MLflow runs this file when the model is loaded; DetectorPyfunc then rebuilds the
network from the logged state dict.
"""

import mlflow

from robust_deepfake.serving import DetectorPyfunc

mlflow.models.set_model(DetectorPyfunc())
