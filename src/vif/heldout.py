"""VIF with a removed unit's own parameters held out of its step (``unit_params``, "VIF-HO").

When unit ``i`` owns parameters ``o`` (its embedding row, its output weights) that leave the model with
it, ``L(theta, 1_{-i})`` no longer couples ``theta_o`` to the rest ``r``, but the full-data Hessian ``H``
still does through its off-diagonal blocks. The step is then taken on the rest alone with the Schur
complement of ``H`` (``theta_o`` held fixed)::

    delta_theta_i[r] = -(H_rr)^-1 D_i[r],   delta_theta_i[o] = 0,   D_i = g(1_{-i}) - g(1)

computed with the same solver as ``z - K_o K_oo^-1 z_o`` where ``z = H^-1 [D_i[r]; 0]`` and
``K_o = H^-1 E_o`` (``|o|`` extra solves per unit). It needs an invertible ``H`` (damp a singular one).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.func import grad, jvp

from .errors import InputError
from .solvers import Solve

__all__ = ["restrict_solution", "own_parameters", "held_out_steps", "check_decoupled", "check_decoupled_all"]

OwnParameters = Callable[[torch.Tensor], torch.Tensor]


def restrict_solution(z: torch.Tensor, columns: torch.Tensor, held: torch.Tensor) -> torch.Tensor:
    """Turn solutions with ``H`` into solutions of ``H`` restricted to the parameters not in ``held``.

    Args:
        z: ``H^-1 [v_r; 0]``, shape ``(n_params,)`` or ``(n_params, k)`` (the right-hand side zero on ``held``).
        columns: ``K_h = H^-1 E_held``, the columns of ``H^-1`` at ``held``, shape ``(n_params, len(held))``.
        held: the parameter indices held fixed.

    Returns:
        ``(H_rr)^-1 v_r`` on the rest and exactly 0 on ``held``, by the Schur complement
        ``(H_rr)^-1 = K_rr - K_rh K_hh^-1 K_hr``: ``z - K_h K_hh^-1 z_h``.
    """
    result = z - columns @ torch.linalg.solve(columns[held], z[held])
    result[held] = 0.0
    return result


def own_parameters(
    unit_params: Sequence | None,
    *,
    n_units: int,
    n_params: int,
    method: str,
    eps: float,
    solve: Solve,
    device: torch.device,
) -> OwnParameters | None:
    """Validate ``unit_params`` and return ``removed units (1-D) -> flat indices of their own parameters``.

    ``solve`` is the built solver: a pseudo-inverse is refused however it was given (``"pinv"``,
    :class:`~vif.solvers.PseudoInverse`, a ready :func:`~vif.solvers.pinv_solver`).

    The union of the members' parameters is held out when a group is removed. The decoupling the
    parameters claim is checked by :func:`check_decoupled`.
    """
    if unit_params is None:
        return None
    if solve.pseudo_inverse:
        raise InputError(
            "unit_params needs the Schur complement of an invertible Hessian, which the pseudo-inverse does not "
            "give; use hessian='exact' with a small damping (e.g. 1e-3) when the Hessian is singular."
        )
    if method != "vif" or eps != 1.0:
        raise InputError(
            "unit_params holds a unit's own parameters out of its removal step, and they only leave the model "
            "when the unit is removed: use method='vif' with eps=1 (the IF and eps < 1 keep the unit in)."
        )
    if len(unit_params) != n_units:
        raise InputError(f"unit_params must have one entry per unit ({n_units}), got {len(unit_params)}.")

    def one(unit: int) -> torch.Tensor:
        index = torch.as_tensor(unit_params[unit], device=device)
        if index.ndim != 1 or index.numel() == 0 or index.is_floating_point() or index.dtype == torch.bool:
            raise InputError(f"unit_params[{unit}] must be a non-empty 1-D sequence of integer parameter indices.")
        if int(index.min()) < 0 or int(index.max()) >= n_params or len(torch.unique(index)) != len(index):
            raise InputError(f"unit_params[{unit}] must hold distinct flat parameter indices in [0, {n_params}).")
        return index.long()

    def own(members: torch.Tensor) -> torch.Tensor:
        return torch.unique(torch.cat([one(int(unit)) for unit in members]))

    return own


def check_decoupled(flat_objective: Callable, theta: torch.Tensor, mask: torch.Tensor, own: torch.Tensor,
                    label: str) -> None:
    """Raise unless ``L(theta, mask)`` has no mixed second derivative between ``own`` and the rest.

    ``mask`` is the mask with the unit (or group) ``label`` removed.
    """
    direction = torch.zeros_like(theta)
    direction[own] = torch.linspace(1.0, 2.0, len(own), dtype=direction.dtype, device=direction.device)
    curvature = jvp(lambda t: grad(flat_objective)(t, mask), (theta,), (direction,))[1]
    scale = float(curvature[own].abs().max())
    curvature[own] = 0.0
    coupling = float(curvature.abs().max())
    if not coupling <= 1e-8 * max(scale, torch.finfo(curvature.dtype).tiny):
        raise InputError(
            f"unit_params of {label} are still coupled to other parameters once it is removed (mixed "
            f"second derivative {coupling:.1e} against {scale:.1e} in their own block), so they do not leave "
            "the model with the unit. List only parameters that no other unit's terms use, or drop unit_params."
        )


def check_decoupled_all(flat_objective: Callable, theta: torch.Tensor, ones: torch.Tensor, removals: object,
                        own: OwnParameters, chunk_size: int = 32) -> None:
    """:func:`check_decoupled` for every removal, batched: one forward-over-reverse pass per removal under vmap.

    ``removals`` is a :class:`vif.removals.Removals`; ``own(members)`` the flat indices each one holds out.
    Falls back to one removal at a time when the objective cannot be vectorised; ``chunk_size`` follows the
    estimate's (``chunk_size=1``: no vmap). Cost: about one masked gradient per removal, i.e. roughly the cost
    of the VIF differences themselves (measured 2.4 s for 20 items of the ranking chapter's quick setup).
    """
    def curvature(mask: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
        return jvp(lambda t: grad(flat_objective)(t, mask), (theta,), (direction,))[1]

    for rows in torch.split(torch.arange(len(removals), device=theta.device), chunk_size):
        masks = ones - removals.directions(rows)
        directions, owned = theta.new_zeros(len(rows), theta.numel()), []
        for position, row in enumerate(rows.tolist()):
            owned.append(own(removals.members(row)))
            directions[position, owned[-1]] = torch.linspace(1.0, 2.0, len(owned[-1]), dtype=theta.dtype,
                                                             device=theta.device)
        try:
            if len(rows) == 1:
                raise RuntimeError("one removal: no vmap")
            curvatures = torch.func.vmap(curvature)(masks, directions)
        except RuntimeError:
            curvatures = torch.stack([curvature(mask, direction) for mask, direction in zip(masks, directions)])
        inside = directions.ne(0)
        scale = torch.where(inside, curvatures.abs(), 0.0).amax(dim=1)
        coupling = torch.where(inside, 0.0, curvatures.abs()).amax(dim=1)
        bad = ~(coupling <= 1e-8 * scale.clamp_min(torch.finfo(theta.dtype).tiny))
        if bool(bad.any()):
            position = int(bad.nonzero()[0, 0])
            row = int(rows[position])
            raise InputError(
                f"unit_params of {removals.label(row)} are still coupled to other parameters once it is removed "
                f"(mixed second derivative {float(coupling[position]):.1e} against {float(scale[position]):.1e} in "
                f"their own block; {int(bad.sum())} removal(s) in this chunk), so they do not leave the model with "
                "the unit. List only parameters that no other unit's terms use, or drop unit_params."
            )


def held_out_steps(solve: Callable, differences: torch.Tensor, owned: list[torch.Tensor]) -> torch.Tensor:
    """``-(H_rr)^-1 D[r]`` and 0 on the held-out parameters, for each row of ``differences`` ``(k, n_params)``.

    ``owned[row]`` are the parameter indices held out for that row. The steps and every row's ``H^-1``
    columns come from one batched solve.
    """
    kept = differences.clone()
    unit_columns = []
    for row, index in enumerate(owned):
        kept[row, index] = 0.0
        columns = differences.new_zeros(differences.shape[1], len(index))
        columns[index, torch.arange(len(index), device=index.device)] = 1.0
        unit_columns.append(columns)
    solutions = solve(torch.cat([kept.T, *unit_columns], dim=1))
    starts = [len(owned)]
    for index in owned[:-1]:
        starts.append(starts[-1] + len(index))
    return torch.stack([-restrict_solution(solutions[:, row], solutions[:, start:start + len(index)], index)
                        for row, (index, start) in enumerate(zip(owned, starts))])
