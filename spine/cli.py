"""Hydra configuration for every command line: one way to compose, validate, explain and report config errors.

Configs live in ``spine/configs`` (inside the package, so a wheel carries them). Every command takes Hydra
overrides (``key=value``, ``group=option``) and validates the result against a dataclass schema, so a typo
in an override ends the command with a one-line message instead of being silently ignored.

``-h`` / ``--help`` prints the command's usage (:func:`usage`): what it does, its config groups with their
options, and every key with its default and a one-line description. The descriptions are the ``# comments``
of the schema's fields (a trailing comment, or the comment lines right above the field), read from the source.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import re
import sys
import textwrap
import tokenize
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf

from spine.errors import InputError
from spine.logs import configure as configure_logging

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
USER_CONFIG_ENV = "SPINE_CONFIGS"  # a folder of the user's own configs; default ./configs (the working directory's)
HELP_FLAGS = ("-h", "--help")
_BARE = re.compile(r"[\w./${}:-]+")  # a string value that needs no quotes in an override

T = TypeVar("T")


class ConfigError(InputError, ValueError):
    """A config that cannot be composed or does not match its schema (exit code 2)."""

    label = "config error"


def compose(command: str, overrides: list[str], schema: type[T]) -> T:
    """Compose ``configs/<command>/<command>.yaml`` with Hydra overrides and validate it against ``schema``.

    Each command has its own config folder, whose subfolders are its config groups (e.g.
    ``configs/synth/preset/tiny.yaml`` is selected by the override ``preset=tiny``).

    Returns an instance of the dataclass ``schema`` (OmegaConf's ``to_object``), with every field typed.
    Raises :class:`ConfigError` with Hydra's or OmegaConf's message for unknown keys, bad values or unknown
    group options.
    """
    from omegaconf.errors import OmegaConfBaseException

    merged = _compose_node(command, overrides, schema)
    try:
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except (OmegaConfBaseException, ValueError) as err:
        raise ConfigError(_first_line(err)) from err


def _compose_node(command: str, overrides: Sequence[str], schema: type) -> DictConfig:
    """The composed, merged config node of :func:`compose`, before the schema's ``__post_init__`` checks."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    config_dir = CONFIG_DIR / command
    user_dir = user_config_dir(command)
    # Group choices (``preset=tiny``) go to Hydra; values (``seed=3``) are merged onto the typed schema,
    # so every field of the schema can be set even where the YAML does not mention it, and unknown keys
    # or ill-typed values are refused by OmegaConf.
    groups = [o for o in overrides if _key(o) and (config_dir / _key(o).lstrip("+~")).is_dir()]
    values = [o for o in overrides if o not in groups]
    try:
        _check_group_syntax(groups)
        search = [f"hydra.searchpath=[file://{user_dir}]"] if user_dir is not None else []
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            cfg = hydra_compose(config_name=command, overrides=[*search, *groups])
        merged = OmegaConf.merge(OmegaConf.structured(schema), _plain(cfg))
        for item in values:
            merged = _merge_value(merged, item)
        return merged
    except ConfigError:
        raise
    except (HydraException, OmegaConfBaseException, ValueError) as err:
        raise ConfigError(_first_line(err)) from err


def user_config_dir(command: str) -> Path | None:
    """The user's own configs of ``command``: ``<SPINE_CONFIGS or ./configs>/<command>/``, None when there is
    none. Hydra searches it after the package's folder, so ``spine-train experiment=my_run`` finds
    ``configs/train/experiment/my_run.yaml`` without editing the package. A file there with the name of one of
    the package's would never be read: that is refused (ConfigError naming both), not silently shadowed."""
    import os

    root = Path(os.environ.get(USER_CONFIG_ENV) or Path.cwd() / "configs")
    folder = root / command
    if not folder.is_dir():
        return None
    package = CONFIG_DIR / command
    clash = sorted(str(p.relative_to(folder)) for p in folder.rglob("*.yaml") if (package / p.relative_to(folder)).is_file())
    if clash:
        raise ConfigError(f"{folder / clash[0]} has the name of spine's own {package / clash[0]}, which Hydra reads "
                          f"first: give yours another name ({len(clash)} such file(s))")
    return folder.resolve()


def _key(override: str) -> str:
    """The key (or group) of an override: what comes before its first ``=``."""
    return override.split("=", 1)[0].strip()


def _check_group_syntax(groups: Sequence[str]) -> None:
    """Hydra's override grammar, one group choice at a time, so that a bad one is named (``stage=[a``)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    for item in groups:
        try:
            parser.parse_overrides([item])
        except OverrideParseException as err:
            reason = next((ln for ln in str(err).splitlines() if ln and not ln.startswith(("Error parsing", "See "))),
                          "not Hydra's override grammar")
            raise ConfigError(f"override {item!r}: {reason} (group=option)") from err


def _merge_value(merged: DictConfig, item: str) -> DictConfig:
    """``merged`` with one ``key=value`` override: the value is read as YAML and checked against the schema.

    ``key=`` (an empty value) is null where the key may be null, else the empty string (as in Hydra). Raises
    ConfigError naming the override for a missing ``=`` or key, a value that is not YAML, and a scalar given
    to a list.
    """
    from omegaconf.errors import OmegaConfBaseException

    key, sep, value = item.partition("=")
    if not sep:
        raise ConfigError(f"override {item!r} is not of the form key=value (--help lists the keys)")
    if not key.strip():
        raise ConfigError(f"override {item!r} has no key before '=' (--help lists the keys)")
    if not value:
        try:
            return OmegaConf.merge(merged, OmegaConf.from_dotlist([item]))
        except OmegaConfBaseException:
            item = f"{key}=''"  # not nullable: the empty string
    try:
        return OmegaConf.merge(merged, _dotlist(item))
    except OmegaConfBaseException as err:
        if "is not a ListConfig" in str(err):
            raise ConfigError(f"{key.strip()} takes a list: {key.strip()}=[a,b] ({key.strip()}=[] for none), "
                              f"got {value!r}") from err
        raise


def _dotlist(item: str) -> DictConfig:
    """``OmegaConf.from_dotlist([item])``, with YAML's syntax errors as a ConfigError that names the override."""
    import yaml

    try:
        return OmegaConf.from_dotlist([item])
    except yaml.YAMLError as err:
        key, _, value = item.partition("=")
        problem = str(getattr(err, "problem", None) or type(err).__name__).replace("'<stream end>'", "its end")
        raise ConfigError(f"override {item!r}: {value!r} is not valid YAML ({problem}); a list is [a,b], and a "
                          f"value holding brackets or commas is quoted: {key}='...'") from err


def compose_or_exit(command: str, overrides: list[str], schema: type[T], description: str = "", *,
                    prog: str = "", nested: Mapping[str, type] | None = None) -> T:
    """:func:`compose` for a ``main()``: ``-h``/``--help`` prints :func:`usage` and exits with code 0; a bad
    config prints one line to stderr and exits with code 2. Sets up the command's logging
    (:func:`spine.logs.configure`)."""
    cfg = compose_or_code(command, overrides, schema, description, prog=prog, nested=nested)
    if isinstance(cfg, int):
        raise SystemExit(cfg)
    return cfg


def compose_or_code(command: str, overrides: list[str], schema: type[T], description: str = "", *,
                    prog: str = "", nested: Mapping[str, type] | None = None) -> T | int:
    """:func:`compose_or_exit` for a ``main()`` that returns its exit code: the config, or 0 after printing the
    help, or 2 after printing one line on a bad config."""
    if show_help(overrides, command, schema, description, prog=prog, nested=nested):
        return 0
    configure_logging(command)
    try:
        return compose(command, overrides, schema)
    except ConfigError as err:  # the one line of every command: [command] config error: ... (spine.errors.command)
        print(f"[{command}] {err.label}: {err}", file=sys.stderr)
        return err.exit_code


# ------------------------------------------------------------------------------------- schema validation
# For the schemas' ``__post_init__``: a number that makes no sense (a negative size, a probability of 1.5) is
# refused there, where `compose` turns the ValueError into a one-line ConfigError naming the key.


def require_range(owner: object, names: str, low: float | None = None, high: float | None = None, *,
                  low_open: bool = False, high_open: bool = False, prefix: str = "") -> None:
    """ValueError naming the first field of ``names`` (space-separated) whose value, or an element of its list,
    lies outside ``[low, high]`` (``low_open`` / ``high_open``: that end excluded; None: unbounded)."""
    for name in names.split():
        value = getattr(owner, name)
        for number in value if isinstance(value, (list, tuple)) else [value]:
            if not _within(number, low, high, low_open, high_open):
                raise ValueError(f"{prefix}{name} must be {_range_text(low, high, low_open, high_open)}, "
                                 f"got {value!r}")


def require_pairs(owner: object, names: str, low: float | None = None, high: float | None = None, *,
                  low_open: bool = False, prefix: str = "") -> None:
    """:func:`require_range` for ``[low, high]`` fields: two values, the first not above the second."""
    for name in names.split():
        value = getattr(owner, name)
        if len(value) != 2 or value[0] > value[1]:
            raise ValueError(f"{prefix}{name} must be [low, high] with low <= high, got {value!r}")
        require_range(owner, name, low, high, low_open=low_open, prefix=prefix)


def require_length(owner: object, names: str, length: int, *, prefix: str = "") -> None:
    """ValueError naming the first list field of ``names`` that does not hold ``length`` values."""
    for name in names.split():
        value = getattr(owner, name)
        if len(value) != length:
            raise ValueError(f"{prefix}{name} needs {length} values, got {value!r}")


def _within(number: float, low: float | None, high: float | None, low_open: bool, high_open: bool) -> bool:
    if low is not None and (number <= low if low_open else number < low):
        return False
    return high is None or (number < high if high_open else number <= high)


def _range_text(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    """``>= 1``, ``> 0``, ``in [0, 1]``, ``in [0, 1)``."""
    if high is None:
        return f"{'>' if low_open else '>='} {low:g}"
    if low is None:
        return f"{'<' if high_open else '<='} {high:g}"
    return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"


# ------------------------------------------------------------------------------------------------ --help


def wants_help(argv: Sequence[str]) -> bool:
    """Whether the command line asks for the usage (``-h`` or ``--help`` anywhere)."""
    return any(arg in HELP_FLAGS for arg in argv)


def show_help(argv: Sequence[str], command: str, schema: type, description: str = "", *, prog: str = "",
              nested: Mapping[str, type] | None = None) -> bool:
    """Print :func:`usage` to stdout when ``argv`` asks for it; returns whether it did."""
    if not wants_help(argv):
        return False
    overrides = [arg for arg in argv if arg not in HELP_FLAGS]
    print(usage(command, schema, description, prog=prog, overrides=overrides, nested=nested))
    return True


def usage(command: str, schema: type, description: str = "", *, prog: str = "", overrides: Sequence[str] = (),
          nested: Mapping[str, type] | None = None) -> str:
    """The usage of a command: what it does, its config groups and options, its keys with defaults and help.

    ``command`` names the config folder (``configs/<command>/``), ``schema`` its dataclass. Defaults are those
    of the composed config (the YAML and its default group options, plus any ``overrides`` given with
    ``--help``: ``preset=tiny --help`` shows the tiny preset's values). ``nested`` maps a dotted key whose
    schema field is untyped (``stage: Any``) to the dataclass that validates it.
    """
    prog = prog or f"python -m spine.{command}"
    groups = config_groups(command)
    lines = [f"usage: {prog} {'[group=option ...] ' if groups else ''}[key=value ...]", ""]
    if description.strip():
        lines += [_plain_text(description), ""]
    if groups:
        lines.append("config groups (group=option; default marked *):")
        width = max(len(name) for name in groups)
        for name, (options, default) in groups.items():
            shown = ", ".join(f"{o}*" if o == default else o for o in options)
            lines.append(f"  {name:<{width}}  {shown}")
        lines.append("")
    defaults = _defaults(command, schema, overrides, nested)
    rows = schema_keys(schema, nested=nested)
    lines.append("keys (key=value; default, then what it is):")
    width = min(max((len(key) for key, _, _ in rows), default=0), 28)
    for key, _, text in rows:
        value = _format_value(_lookup(defaults, key))
        lines.append(f"  {key:<{width}}  {value}" + (f"  # {text}" if text else ""))
    lines += ["", "-h, --help  this text. Overrides are Hydra's: a typo in a key or an option is an error (exit 2)."]
    return "\n".join(lines)


def config_groups(command: str) -> dict[str, tuple[list[str], str | None]]:
    """``{group: (options, default option)}`` of ``configs/<command>/``: its subfolders and their YAML names."""
    config_dir = CONFIG_DIR / command
    defaults = _default_choices(config_dir / f"{command}.yaml")
    try:
        user_dir = user_config_dir(command)
    except ConfigError:  # a clash is reported when the command composes; the help lists the package's options
        user_dir = None
    groups = {}
    for folder in sorted(p for p in config_dir.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))):
        mine = sorted(p.stem for p in (user_dir / folder.name).glob("*.yaml")) if user_dir is not None else []
        options = sorted({p.stem for p in folder.glob("*.yaml")} | set(mine))
        if options:
            groups[folder.name] = (options, defaults.get(folder.name))
    return groups


def schema_keys(schema: type, prefix: str = "", nested: Mapping[str, type] | None = None
                ) -> list[tuple[str, dataclasses.Field, str]]:
    """``(dotted key, field, one-line help)`` of every leaf field of a dataclass schema, nested ones expanded."""
    nested = nested or {}
    hints = _type_hints(schema)
    texts = field_help(schema)
    rows = []
    for f in dataclasses.fields(schema):
        key = f"{prefix}{f.name}"
        inner = nested.get(key) or hints.get(f.name)
        if isinstance(inner, type) and dataclasses.is_dataclass(inner):
            rows += schema_keys(inner, f"{key}.", nested)
        else:
            rows.append((key, f, texts.get(f.name, "")))
    return rows


def field_help(schema: type) -> dict[str, str]:
    """``{field name: help}`` from the ``# comments`` of a dataclass's source: the comment on the field's line,
    else the comment lines right above it (joined into one line). Empty when the source is not available."""
    try:
        source = textwrap.dedent(inspect.getsource(schema))
    except (OSError, TypeError):
        return {}
    comments: dict[int, str] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string.lstrip("#").strip()
    lines = source.splitlines()
    texts = {}
    body = ast.parse(source).body[0].body  # type: ignore[attr-defined]
    for node in body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        inline = [comments[n] for n in range(node.lineno, (node.end_lineno or node.lineno) + 1)
                  if n in comments and lines[n - 1].strip()[:1] != "#"]
        above = []
        n = node.lineno - 1
        while n >= 1 and lines[n - 1].strip().startswith("#"):
            above.insert(0, comments.get(n, ""))
            n -= 1
        text = " ".join(inline) or " ".join(above)
        if text:
            texts[node.target.id] = text
    return texts


def _type_hints(schema: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(schema)
    except (NameError, TypeError):  # an annotation that does not resolve: no nesting through it
        return {}


def _default_choices(primary: Path) -> dict[str, str | None]:
    """``{group: option}`` of the ``defaults`` list of a primary config (``- preset: small``)."""
    if not primary.is_file():
        return {}
    entries = OmegaConf.to_container(OmegaConf.load(primary)).get("defaults") or []
    choices: dict[str, str | None] = {}
    for entry in entries:
        if isinstance(entry, dict):
            for group, option in entry.items():
                choices[str(group).split("@")[0].removeprefix("override ").strip("/")] = option
    return choices


def _defaults(command: str, schema: type, overrides: Sequence[str], nested: Mapping[str, type] | None = None) -> dict:
    """The composed config as a plain dict: with ``overrides`` when they compose, else without, else the schema's.
    A ``nested`` node (``stage``) is filled in with its own schema's defaults, which its YAML does not restate."""
    from omegaconf.errors import OmegaConfBaseException

    tree = None
    for attempt in (list(overrides), []):
        try:
            tree = OmegaConf.to_container(_compose_node(command, attempt, schema), resolve=True)
            break
        except ConfigError:
            continue
    if tree is None:
        return OmegaConf.to_container(OmegaConf.structured(schema))
    for key, inner in (nested or {}).items():
        parent, _, name = key.rpartition(".")
        node = _lookup(tree, parent) if parent else tree
        if isinstance(node, dict) and isinstance(node.get(name), dict):
            try:
                node[name] = OmegaConf.to_container(OmegaConf.merge(OmegaConf.structured(inner), node[name]))
            except (OmegaConfBaseException, ValueError):  # a value the schema refuses: shown as composed
                pass
    return tree


def _lookup(tree: Any, key: str) -> Any:
    for part in key.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return None
        tree = tree[part]
    return tree


def _format_value(value: Any) -> str:
    """A default as it would be written in an override (``[4.0,4.0]``, ``''``, ``'Sagittal T1'``, ``null``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return value if _BARE.fullmatch(value) else repr(value)
    if isinstance(value, list):
        return "[" + ",".join(_format_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_format_value(v)}" for k, v in value.items()) + "}"
    return str(value)


def _plain_text(docstring: str) -> str:
    """A module docstring for a terminal: without reST's double backquotes."""
    return inspect.cleandoc(docstring).replace("``", "").strip()


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
