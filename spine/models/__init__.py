"""Models by registered name: ``create_model("landmark_25d", in_chans=2, ...)``; see :mod:`.registry`."""

from spine.models.registry import create_model, list_models, load_weights, model_arguments, model_inputs, register_model

__all__ = ["create_model", "list_models", "load_weights", "model_arguments", "model_inputs", "register_model"]
