"""The doctor's checks, each declared once, where it is written: ``@check(name, order=..., help=...)``.

Everything else is derived from the registry: the default ``checks`` of :class:`~spine.doctor.config.DoctorConfig`
and their order (ascending ``order``), the validation of ``checks=[...]``, the dispatch of
:func:`spine.doctor.run.run_check` and the list of checks in ``spine-doctor --help``. To add a check, decorate a
function of a :class:`~spine.doctor.result.Context` returning a :class:`~spine.doctor.result.CheckResult` in one of
the :data:`CHECK_MODULES` (a new module: add it there too)::

    @check("my_check", order=75, help="what it measures and what a failure means")
    def check_my_check(ctx) -> CheckResult: ...

No torch here, and the check modules are imported only when the registry is first read (:func:`checks`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from textwrap import wrap

# The modules that hold checks, imported on the first read of the registry.
CHECK_MODULES = ("spine.doctor.points", "spine.doctor.fidelity", "spine.doctor.labels", "spine.doctor.learn",
                 "spine.doctor.throughput")
HELP_WIDTH = 112  # the --help list: name column, then the help wrapped to this many characters a line


@dataclass(frozen=True)
class Check:
    """One registered check: its name (a value of ``checks``), its place in the default order, its one-paragraph
    help (``--help``) and the function that runs it."""

    name: str
    order: int
    help: str
    fn: Callable


_REGISTRY: dict[str, Check] = {}


def check(name: str, *, order: int, help: str) -> Callable[[Callable], Callable]:
    """Register the decorated function as the check ``name``, run by default at position ``order`` (ascending)."""

    def register(fn: Callable) -> Callable:
        known = _REGISTRY.get(name)
        if known is not None and _where(known.fn) != _where(fn):
            raise ValueError(f"doctor check {name!r} registered twice: {_where(known.fn)} and {_where(fn)}")
        clash = [c.name for c in _REGISTRY.values() if c.order == order and c.name != name]
        if clash:
            raise ValueError(f"doctor check {name!r}: order {order} is taken by {clash[0]!r}")
        _REGISTRY[name] = Check(name, order, " ".join(help.split()), fn)
        return fn

    return register


def checks() -> dict[str, Check]:
    """Every registered check by name, in the default order."""
    for module in CHECK_MODULES:
        importlib.import_module(module)
    return {c.name: c for c in sorted(_REGISTRY.values(), key=lambda c: c.order)}


def check_names() -> tuple[str, ...]:
    """The names of the checks, in the default order (the default of ``checks``)."""
    return tuple(checks())


def check_function(name: str) -> Callable:
    """The function of the check ``name`` (KeyError for an unknown name)."""
    return checks()[name].fn


def help_text(indent: int = 2) -> str:
    """The checks and their help, one paragraph each, as ``spine-doctor --help`` lists them."""
    registered = checks().values()
    width = max(len(c.name) for c in registered)
    lines = []
    for c in registered:
        head = " " * indent + f"{c.name:<{width}}  "
        body = wrap(c.help, HELP_WIDTH - len(head)) or [""]
        lines += [head + body[0]] + [" " * len(head) + line for line in body[1:]]
    return "\n".join(lines)


def _where(fn: Callable) -> str:
    return f"{fn.__module__}.{fn.__qualname__}"
