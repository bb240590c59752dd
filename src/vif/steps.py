"""The removal step every route shares: ``delta_theta = -H^-1 D`` for chunks of removals.

``D`` are the gradient differences of :meth:`vif.problem.Problem.gradient_differences` (VIF or IF), ``H^-1``
the one built solver (:func:`vif.solvers.make_solver`), and with ``unit_params`` a removed unit's own
parameters are held out of its step (:mod:`vif.heldout`). :func:`vif.influence`,
:func:`vif.parameter_influence`, :func:`vif.trust.trust` and :func:`vif.datamodels.second_order_influence`
all take their steps from here, so the diagnostics check exactly the step the estimate took.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from .errors import MaskIgnoredError
from .heldout import check_decoupled_all, held_out_steps, own_parameters
from .problem import Problem
from .removals import Removals
from .solvers import Solve

__all__ = ["Steps", "chunks", "mask_ignored"]


def mask_ignored() -> MaskIgnoredError:
    """The error for estimates that are all exactly zero."""
    return MaskIgnoredError(
        "Every influence is exactly zero: the objective's gradient does not change when a unit is "
        "removed, so the objective ignores its mask argument (or the target does not depend on params). "
        "Make objective(params, mask) drop unit i wherever it appears when mask[i] = 0."
    )


def chunks(problem: Problem, removals: Removals, method: str, eps: float, chunk_size: int
           ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The one chunk loop of every route: ``(rows, D)`` with ``D`` of shape ``(len(rows), n_params)``.

    ``rows`` index ``removals``; ``delta_theta = -H^-1 D[row]``. Raises :class:`MaskIgnoredError` at the end
    if every difference was exactly zero.
    """
    nonzero = False
    for rows in torch.split(torch.arange(len(removals), device=problem.theta.device), chunk_size):
        differences = problem.gradient_differences(removals, rows, method, eps)
        nonzero = nonzero or bool(differences.ne(0).any())
        yield rows, differences
    if not nonzero and len(removals):
        raise mask_ignored()


class Steps:
    """``delta_theta = -H^-1 D`` for chunks of removals, with ``unit_params`` held out when given.

    Args:
        problem, removals: the built problem and what is removed. solve: the built solver.
        unit_params: per unit, the flat indices of the parameters it alone uses (validated here; the claim is
            checked for every removal unless ``check=False``).
        method, eps: the estimate's (``unit_params`` needs VIF at ``eps = 1``). chunk_size: of the check.
    """

    def __init__(self, problem: Problem, removals: Removals, solve: Solve, unit_params: Sequence | None,
                 method: str, eps: float, chunk_size: int = 32, check: bool = True) -> None:
        self.problem, self.removals, self.solve = problem, removals, solve
        self.own = own_parameters(unit_params, n_units=problem.n_units, n_params=problem.theta.numel(),
                                  method=method, eps=eps, solve=solve, device=problem.theta.device)
        if self.own is not None and len(removals) and check:
            check_decoupled_all(problem.flat_objective, problem.theta, problem.ones, removals, self.own, chunk_size)

    def __call__(self, rows: torch.Tensor, differences: torch.Tensor) -> torch.Tensor:
        """The steps ``(len(rows), n_params)`` of the removals ``rows`` with gradient differences ``D``."""
        if self.own is None:
            return -self.solve(differences.T).T
        return held_out_steps(self.solve, differences, [self.own(self.removals.members(int(row))) for row in rows])

    def all(self, method: str, eps: float, chunk_size: int) -> torch.Tensor:
        """Every removal's step, ``(n_removals, n_params)``: the predicted parameter changes."""
        rows = [self(chunk, differences)
                for chunk, differences in chunks(self.problem, self.removals, method, eps, chunk_size)]
        return torch.cat(rows) if rows else self.problem.theta.new_zeros(0, self.problem.theta.numel())
