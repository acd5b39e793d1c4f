"""Hydra configuration for every command line: one way to compose, validate and report config errors.

Configs live in ``spine/configs`` (inside the package, so a wheel carries them). Every command takes Hydra
overrides (``key=value``, ``group=option``) and validates the result against a dataclass schema, so a typo
in an override ends the command with a one-line message instead of being silently ignored.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TypeVar

from omegaconf import DictConfig, OmegaConf

CONFIG_DIR = Path(__file__).resolve().parent / "configs"

T = TypeVar("T")


class ConfigError(ValueError):
    """A config that cannot be composed or does not match its schema."""


def compose(command: str, overrides: list[str], schema: type[T]) -> T:
    """Compose ``configs/<command>/<command>.yaml`` with Hydra overrides and validate it against ``schema``.

    Each command has its own config folder, whose subfolders are its config groups (e.g.
    ``configs/synth/preset/tiny.yaml`` is selected by the override ``preset=tiny``).

    Returns an instance of the dataclass ``schema`` (OmegaConf's ``to_object``), with every field typed.
    Raises :class:`ConfigError` with Hydra's or OmegaConf's message for unknown keys, bad values or unknown
    group options.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    config_dir = CONFIG_DIR / command
    # Group choices (``preset=tiny``) go to Hydra; values (``seed=3``) are merged onto the typed schema,
    # so every field of the schema can be set even where the YAML does not mention it, and unknown keys
    # or ill-typed values are refused by OmegaConf.
    groups = [o for o in overrides if (config_dir / o.split("=", 1)[0].lstrip("+~")).is_dir()]
    values = [o for o in overrides if o not in groups]
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            cfg = hydra_compose(config_name=command, overrides=groups)
        merged = OmegaConf.merge(OmegaConf.structured(schema), _plain(cfg))
        for item in values:
            if "=" not in item:
                raise ConfigError(f"override {item!r} is not of the form key=value")
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist([item]))
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except ConfigError:
        raise
    except (HydraException, OmegaConfBaseException, ValueError) as err:
        raise ConfigError(_first_line(err)) from err


def compose_or_exit(command: str, overrides: list[str], schema: type[T]) -> T:
    """:func:`compose` for a ``main()``: a bad config prints one line to stderr and exits with code 2."""
    try:
        return compose(command, overrides, schema)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def to_yaml(obj: object) -> str:
    """A dataclass config as YAML (what a run folder stores as ``config.yaml``)."""
    return OmegaConf.to_yaml(OmegaConf.structured(obj))


def _plain(cfg: DictConfig) -> DictConfig:
    """Drop Hydra's own node and group-choice bookkeeping so that only our keys meet the schema."""
    container = OmegaConf.to_container(cfg, resolve=True)
    container.pop("hydra", None)
    return OmegaConf.create(container)


def _first_line(err: BaseException) -> str:
    """Hydra's and OmegaConf's message on one line, without the search path and type bookkeeping."""
    lines = []
    for line in str(err).splitlines():
        line = line.strip()
        if line.startswith(("Config search path", "provider=")):
            break
        if line and not line.startswith(("object_type=", "full_key: ")):
            lines.append(line)
    key = next((ln.strip() for ln in str(err).splitlines() if ln.strip().startswith("full_key:")), "")
    text = " ".join(lines) or type(err).__name__
    return f"{text} ({key.split(',')[0]})" if key else text
