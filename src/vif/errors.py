"""Exceptions and warnings raised by :mod:`vif`.

Every message names the problem, the value that was seen and a remedy. All exceptions derive from
:class:`VIFError`, and each also derives from the built-in exception a caller would expect
(``ValueError`` for bad input, ``RuntimeError`` for a solver that did not converge, ...), so that
``except ValueError`` keeps working for code that does not know about :mod:`vif`.
"""

from __future__ import annotations

__all__ = [
    "VIFError",
    "InputError",
    "MaskError",
    "MaskIgnoredError",
    "NonFiniteError",
    "NotPositiveDefiniteError",
    "ConvergenceError",
    "NoFiniteMinimiserError",
    "DatasetNotFoundError",
    "ConvergenceWarning",
    "NotAMinimiserError",
    "UnconvergedWarning",
    "RefitError",
    "CacheWarning",
    "RefitWarning",
]


class VIFError(Exception):
    """Base class of every exception raised by :mod:`vif`."""


class InputError(VIFError, ValueError):
    """An argument has the wrong type, shape, value or name."""


class MaskError(InputError):
    """A unit mask has the wrong shape or values, or does not match ``n_units``."""


class MaskIgnoredError(InputError):
    """The objective does not depend on the mask, so every influence is exactly zero."""


class NonFiniteError(VIFError, FloatingPointError):
    """An objective, gradient, Hessian or target evaluated to NaN or infinity."""


class NotPositiveDefiniteError(VIFError, ValueError):
    """The (damped) Hessian is not positive definite, so ``H^-1`` does not exist or is not meaningful."""


class ConvergenceError(VIFError, RuntimeError):
    """An iterative solver or a fit stopped before reaching its tolerance."""


class NoFiniteMinimiserError(ConvergenceError):
    """The problem has no finite minimiser (monotone likelihood, separation): a coefficient runs off."""


class DatasetNotFoundError(VIFError, FileNotFoundError):
    """A dataset that cannot ship with the package is not in the cache folder."""


class ConvergenceWarning(UserWarning):
    """An iterative solver did not reach its tolerance and ``on_nonconvergence="warn"`` was chosen."""


class NotAMinimiserError(VIFError, ValueError):
    """``params`` is not a minimiser of the objective (its gradient is large against a removal's effect)."""


class UnconvergedWarning(UserWarning):
    """``params`` fails the stationarity check and ``on_unconverged="warn"`` was chosen."""


class RefitError(VIFError, RuntimeError):
    """A leave-one-out refit failed; the message names the unit (or group) and the cause."""


class CacheWarning(UserWarning):
    """A leave-one-out cache entry was unreadable or written for another removal; it is recomputed."""


class RefitWarning(UserWarning):
    """Some leave-one-out refits failed and ``on_error="skip"`` was chosen; the failed removals are marked."""
