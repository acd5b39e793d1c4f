"""The model registry: ``@register_model`` constructors and ``create_model(name, **kwargs)`` (timm style).

A constructor is a small function that returns an ``nn.Module``; its name is the model's name. Keyword
arguments are checked against the constructor's signature, so a misspelt option fails with the list of
valid ones instead of being swallowed. Every model built here remembers how it was built
(``model.spine_name``, ``model.spine_kwargs``), which is what a run folder stores to rebuild it.
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from spine.errors import InputError

_MODELS: dict[str, Callable[..., Any]] = {}


_INPUTS: dict[str, str] = {}  # model name -> the input kind it reads (grading models: spine.data.inputs)


def register_model(fn: Callable[..., Any] | None = None, *, inputs: str | None = None):
    """Decorator: register ``fn`` under its own name. Names must be unique.

    ``@register_model(inputs="crops")``: the model also declares what it reads (a kind of
    :data:`spine.data.inputs.INPUT_KINDS`), which decides its data everywhere (training, inference, report).
    """
    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        name = fn.__name__
        if name in _MODELS and _MODELS[name] is not fn:
            raise ValueError(f"model {name!r} is registered twice")
        _MODELS[name] = fn
        if inputs is not None:
            _INPUTS[name] = inputs
        return fn
    return register if fn is None else register(fn)


def model_inputs(name: str) -> str | None:
    """The input kind model ``name`` declares (``register_model(inputs=...)``), None if it declares none."""
    _entrypoint(name)
    return _INPUTS.get(name)


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style pattern, sorted."""
    _load_builtin()
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def model_arguments(name: str) -> list[str]:
    """The keyword arguments the constructor of ``name`` accepts."""
    fn = _entrypoint(name)
    return [p.name for p in inspect.signature(fn).parameters.values()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def spread_backbone_kwargs(args: dict[str, Any]) -> dict[str, Any]:
    """An entry point's own arguments (``locals()``) as keywords for its network class, ``backbone_kwargs``
    (the timm encoder's options) spread among them: ``Net(**spread_backbone_kwargs(locals()), ...)``."""
    args = dict(args)
    return {**args, **(args.pop("backbone_kwargs", None) or {})}


def create_model(name: str, weights: str | Path | None = None, **kwargs: Any):
    """Build the registered model ``name`` with ``kwargs``.

    Args:
        name: a name from :func:`list_models`.
        weights: optional local file with the *whole* model's weights (``.safetensors`` or a torch
            ``state_dict``), loaded strictly after construction (e.g. a run's ``model.safetensors``).
            Backbone-only pretrained weights are a constructor option (``pretrained_file``).
        kwargs: constructor arguments; unknown names raise ``ValueError`` listing the valid ones.
    """
    fn = _entrypoint(name)
    params = inspect.signature(fn).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(kwargs) - set(model_arguments(name)))
        if unknown:
            raise ValueError(f"model {name!r} has no argument(s) {', '.join(unknown)}; "
                             f"it accepts: {', '.join(model_arguments(name))}")
    model = fn(**kwargs)
    model.spine_name = name
    model.spine_kwargs = dict(kwargs)
    if weights is not None:
        load_weights(model, weights)
    return model


def load_weights(model, path: str | Path) -> None:
    """Load a whole-model state dict from ``.safetensors`` or a torch file into ``model`` (strict)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise InputError(f"model weights {path} not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("model", state) if isinstance(state, dict) else state
    model.load_state_dict(state, strict=True)


def _entrypoint(name: str) -> Callable[..., Any]:
    _load_builtin()
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; registered models: {', '.join(sorted(_MODELS))}")
    return _MODELS[name]


def _load_builtin() -> None:
    """Import the modules whose constructors register themselves (once)."""
    import spine.models.grading  # noqa: F401
    import spine.models.grading_views  # noqa: F401
    import spine.models.landmarks  # noqa: F401
