"""``spine-doctor``: the five-minute checks that show what cost others weeks (see :mod:`spine.doctor.__main__`).

Each check is a function of a :class:`~spine.doctor.result.Context` returning a
:class:`~spine.doctor.result.CheckResult`, registered by name with ``@check`` (:mod:`spine.doctor.registry`,
which gives the default list and order and the ``--help`` text); the arithmetic
behind it is a pure function of plain tables and arrays (``spine.doctor.points``, ``fidelity``, ``labels``,
``learn``, ``throughput``), so that tests can plant each failure and see it caught. torch is imported only by
the learn and throughput checks, when they run.
"""

from spine.doctor.result import FAIL, PASS, WARN, CheckResult, Context

__all__ = ["FAIL", "PASS", "WARN", "CheckResult", "Context"]
