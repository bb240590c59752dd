"""An objective at its minimiser, flattened and checked, with the masked gradient differences every route needs.

Shared by :mod:`vif.influence` (and the trust diagnostics): one place validates the objective and the mask
length and computes ``D = [g(1 - eps r) - g(1)] / eps`` (VIF) or ``D = -sum_j r_j d g / d m_j`` (IF) for
removals ``r`` (:mod:`vif.removals`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.func import grad, jacrev, jvp, vmap

from .errors import InputError, NonFiniteError, VIFError
from .params import Params, check_finite, flatten
from .removals import Removals

__all__ = ["Problem", "TaskHooks", "resolve_task", "HOOK_RTOL"]

#: removals at or above which VIF checks whether the objective is linear in the mask (a few passes)
LINEARITY_CHECK_MIN_REMOVALS = 16
#: a task's hook may differ from autodiff by this fraction of the largest difference (rounding of either)
HOOK_RTOL = {torch.float64: 1e-6, torch.float32: 1e-3}


@dataclass(frozen=True)
class TaskHooks:
    """A task's optional fast paths and declarations (all optional; see :class:`vif.task.Task`).

    Attributes:
        dense: ``mask_gradient_differences(params, masks (k, n)) -> (k, n_params)``.
        sparse: ``mask_change_gradient_differences(params, rows, units, values, k) -> (k, n_params)``: the same
            for ``k`` masks equal to 1 except ``mask[rows[j], units[j]] = values[j]`` (no dense mask built).
        mask_linear: ``True``: the task declares ``L(theta, m)`` linear in ``m`` (verified before use);
            ``False``: it is not (no check); ``None``: the engine checks when it could pay off.
    """

    dense: Callable | None = None
    sparse: Callable | None = None
    mask_linear: bool | None = None


def resolve_task(objective: object, n_units: int | None) -> tuple[Callable, int, TaskHooks | None]:
    """Accept a task or a bare ``objective(params, mask)`` with ``n_units``.

    Returns ``(objective, n_units, hooks)``: a task's ``objective`` and ``n_units`` and its optional fast paths
    and declarations (:class:`TaskHooks`); ``None`` for a bare objective.
    """
    task_objective = getattr(objective, "objective", None)
    if callable(task_objective) and hasattr(objective, "n_units"):
        found = {name: getattr(objective, attribute, None) for name, attribute in
                 (("dense", "mask_gradient_differences"), ("sparse", "mask_change_gradient_differences"))}
        linear = getattr(objective, "mask_linear", None)
        if linear is not None and not isinstance(linear, bool):
            raise InputError(f"A task's mask_linear must be True, False or absent, got {linear!r}.")
        hooks = TaskHooks(**{k: v if callable(v) else None for k, v in found.items()}, mask_linear=linear)
        return task_objective, objective.n_units if n_units is None else n_units, hooks
    if n_units is None:
        raise InputError("n_units is required with a bare objective(params, mask) (the length of the mask).")
    return objective, n_units, None


class Problem:
    """An objective at its minimiser, flattened, with the checks every entry point needs."""

    def __init__(self, objective: Callable, params: Params, n_units: int, *, vectorize: bool,
                 hook: TaskHooks | Callable | None = None) -> None:
        if not callable(objective):
            raise InputError(f"objective must be callable as objective(params, mask), got {type(objective).__name__}.")
        if isinstance(n_units, bool) or not isinstance(n_units, int) or n_units < 1:
            raise InputError(f"n_units must be a positive int (the length of the mask), got {n_units!r}.")
        self.objective = objective
        self.theta, self.unflatten = flatten(params)
        self.n_units = n_units
        self.vectorize = vectorize
        # a task's closed-form g(m) - g(1) (a bare callable is the dense hook); autodiff below is the reference
        self.hooks = hook if isinstance(hook, TaskHooks) else TaskHooks(dense=hook)
        self.mask_linear = False  # set by prefer_mask_jacobian once linearity in the mask is verified
        self.ones = torch.ones(n_units, dtype=self.theta.dtype, device=self.theta.device)
        # on copies: an objective that writes into params or mask in place is caught before it alters either
        theta_copy, mask_copy = self.theta.clone(), self.ones.clone()
        value = self._call_checked(theta_copy, mask_copy)
        self._check_untouched(theta_copy, mask_copy)
        if value.ndim != 0:
            raise InputError(
                f"objective(params, mask) must return a scalar tensor, got shape {tuple(value.shape)}; "
                "sum or average the per-term losses."
            )
        check_finite(value, "objective(params, ones)", "The objective is not finite at params on the full data.")
        # the mask captured, as the solvers see it: an in-place write into it raises here (checks.build_problem)
        self.full_gradient = check_finite(grad(self.full_objective)(self.theta),
                                          "the gradient of the objective at params")
        self.mask_jacobian: torch.Tensor | None = None
        if self.hooks.dense is not None or self.hooks.sparse is not None:
            self._check_hooks()

    def _check_untouched(self, theta: torch.Tensor, mask: torch.Tensor) -> None:
        """Raise when the objective call changed its ``params`` (``theta``) or ``mask`` argument in place."""
        for name, before, after, remedy in (
                ("params", self.theta, theta, "compute new tensors (params['w'] + 1, torch.cat) instead of +=, "
                 "[...] = or .add_() on a parameter"),
                ("mask", self.ones, mask, "never write into mask (compute a new tensor, e.g. torch.where(..., mask, "
                 "0) or mask * 0.5)")):
            if not bool(((before == after) | (before.isnan() & after.isnan())).all()):
                change = float((after - before).abs().nan_to_num(nan=float("inf")).max())
                raise InputError(
                    f"objective(params, mask) modified its {name} argument in place (max change {change:.3e}); the "
                    f"estimates would use the altered {name}. {remedy[0].upper()}{remedy[1:]}."
                )

    def _check_hooks(self) -> None:
        """A task's gradient-difference hooks against autodiff for two single-unit removals (once per Problem).

        Cost: two masked gradients and one call of each hook. Raises :class:`InputError` naming the hook, the
        units, the mismatch and the tolerance (``HOOK_RTOL`` of the largest autodiff difference).
        """
        device = self.theta.device
        units = torch.linspace(0, self.n_units - 1, 4, device=device).round().long()[1:3].unique()
        rows = torch.arange(len(units), device=device)
        masks = self.ones.repeat(len(units), 1)
        masks[rows, units] = 0.0
        gradient_at = grad(self.flat_objective)
        reference = torch.stack([gradient_at(self.theta, mask) for mask in masks]) - self.full_gradient
        params, zeros = self.unflatten(self.theta), torch.zeros(len(units), dtype=self.theta.dtype, device=device)
        calls = (("mask_gradient_differences", self.hooks.dense, lambda hook: hook(params, masks)),
                 ("mask_change_gradient_differences", self.hooks.sparse,
                  lambda hook: hook(params, rows, units, zeros, len(units))))
        rtol = HOOK_RTOL.get(self.theta.dtype, HOOK_RTOL[torch.float32])
        for name, hook, call in calls:
            if hook is None:
                continue
            try:
                found = call(hook)
            except (RuntimeError, ValueError, IndexError, TypeError) as error:
                raise InputError(f"The task's {name} hook failed on single-unit removals {units.tolist()}: {error}") \
                    from error
            if not isinstance(found, torch.Tensor) or found.shape != reference.shape:
                shape = tuple(found.shape) if isinstance(found, torch.Tensor) else type(found).__name__
                raise InputError(f"The task's {name} hook returned {shape} for {len(units)} masks; expected "
                                 f"{tuple(reference.shape)} (masks, parameters in vif.params.flatten order).")
            mismatch = float((found.to(reference.dtype) - reference).abs().max())
            size = float(reference.abs().max())
            if not mismatch <= rtol * size:
                raise InputError(
                    f"The task's {name} hook disagrees with autodiff of its objective when unit(s) {units.tolist()} "
                    f"are removed: max|hook - autodiff| = {mismatch:.3e} against max|autodiff| = {size:.3e} (tolerance "
                    f"{rtol:.0e} of it; a sign flip gives twice it). Every VIF estimate would use the hook: fix it "
                    "so that it returns grad L(params, mask) - grad L(params, 1), or remove it (autodiff is the "
                    "reference)."
                )

    def _call_checked(self, theta: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        try:
            value = self.flat_objective(theta, mask)
        except VIFError:
            raise
        except (RuntimeError, IndexError, ValueError) as error:
            raise InputError(
                f"objective(params, mask) failed for a mask of shape ({self.n_units},): {error}. "
                "Does n_units equal the number of units the objective was built for?"
            ) from error
        if not isinstance(value, torch.Tensor):
            raise InputError(f"objective(params, mask) must return a torch.Tensor, got {type(value).__name__}.")
        return value

    def flat_objective(self, theta: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``L(theta, mask)`` on the flat parameter vector."""
        return self.objective(self.unflatten(theta), mask)

    def full_objective(self, theta: torch.Tensor) -> torch.Tensor:
        """``L(theta, 1)``: the function whose Hessian the solvers invert."""
        return self.flat_objective(theta, self.ones)

    def route(self, method: str) -> str:
        """The route that computes ``method``: ``"if"`` for VIF when the objective is linear in the mask.

        If ``L(theta, m)`` is linear in ``m``, ``g(1 - eps r) - g(1) = -eps sum_j r_j d g / d m_j`` exactly, so
        VIF equals the IF and takes its (one-pass Jacobian) route.
        """
        return "if" if method == "vif" and self.mask_linear else method

    def prefer_mask_jacobian(self, method: str, alternative_passes: int) -> None:
        """Check linearity in the mask (VIF), then build ``d g / d m`` for all units when that takes fewer passes.

        The Jacobian costs ``n_params`` reverse passes; the alternative costs one pass per removal or target.
        """
        n_params = self.theta.numel()
        wanted = self.vectorize and n_params < alternative_passes and n_params <= 4096
        if method == "vif" and not self.mask_linear:
            declared = self.hooks.mask_linear
            if declared and wanted:  # declared: build the Jacobian the route needs first, and verify with it
                self._build_mask_jacobian()
            if declared or (declared is None and alternative_passes >= LINEARITY_CHECK_MIN_REMOVALS):
                self.mask_linear = self._linear_in_mask(declared=bool(declared))
        if self.route(method) == "if" and wanted and self.mask_jacobian is None:
            self._build_mask_jacobian()

    def _build_mask_jacobian(self) -> None:
        """``d g / d m`` at ``m = 1``, shape ``(n_params, n_units)``: ``n_params`` reverse passes, vmapped."""
        self.mask_jacobian = jacrev(lambda mask: grad(self.flat_objective)(self.theta, mask), chunk_size=64)(self.ones)
        # the IF's D rows are rows of -J^T: store them contiguous once (a row gather per chunk, no strided copy),
        # and check finiteness once instead of per chunk
        self._negated_rows = -self.mask_jacobian.T.contiguous()
        self._jacobian_finite = bool(torch.isfinite(self._negated_rows).all())

    def _linear_in_mask(self, *, declared: bool) -> bool:
        """Whether ``g(1 - v) - g(1) = -(d g / d m) v`` for a dense random ``v`` and for two single units.

        A finite difference against the mask derivative (not a second derivative, which piecewise-linear
        objectives would fool), to ``1e-8`` of the gradients' scale; the derivative from the mask Jacobian when
        it is built, else one forward-over-reverse pass. A declared linearity that fails raises.
        """
        generator = torch.Generator(device="cpu").manual_seed(0)
        dense = torch.rand(self.n_units, generator=generator, dtype=self.theta.dtype, device="cpu").to(self.ones.device)
        units = torch.randperm(self.n_units, generator=generator, device="cpu")[:2]
        directions = [dense] + [torch.nn.functional.one_hot(unit, self.n_units).to(self.ones) for unit in units]
        gradient_at = grad(self.flat_objective)
        try:
            for direction in directions:
                difference = gradient_at(self.theta, self.ones - direction) - self.full_gradient
                derivative = (self.mask_jacobian @ direction if self.mask_jacobian is not None else
                              jvp(lambda mask: gradient_at(self.theta, mask), (self.ones,), (direction,))[1])
                scale = max(float(difference.abs().max()), float(derivative.abs().max()), 1e-300)
                if not bool(torch.isfinite(difference).all()) or float((difference + derivative).abs().max()) > 1e-8 * scale:
                    break
            else:
                return True
        except (RuntimeError, ValueError, VIFError) as error:
            if declared:
                raise InputError(f"The task declares mask_linear = True but checking it failed: {error}") from error
            return False
        if declared:
            raise InputError(
                "The task declares mask_linear = True, but g(1 - r) - g(1) differs from the mask derivative "
                "(the objective is not linear in its mask); remove the declaration."
            )
        return False

    def map(self, function: Callable, *batches: torch.Tensor) -> torch.Tensor:
        """Apply ``function`` to rows of ``batches``: vmap, or a Python loop when ``vectorize=False``.

        A batch of one row is evaluated directly: vmap's bookkeeping costs more than it saves there.
        ``function`` may return a tensor or a tuple of tensors (stacked element-wise).
        """
        if not self.vectorize or batches[0].shape[0] == 1:
            results = [function(*rows) for rows in zip(*batches)]
            if isinstance(results[0], tuple):
                return tuple(torch.stack(parts) for parts in zip(*results))
            return torch.stack(results)
        try:
            return vmap(function)(*batches)
        except RuntimeError as error:
            if "vmap" not in str(error) and "batched" not in str(error).lower():
                raise
            raise InputError(
                f"The objective or target cannot be vectorised over masks with torch.func.vmap ({error}). "
                "Avoid .item(), in-place updates of inputs and Python branches on mask values, or pass "
                "vectorize=False (slower: one unit at a time)."
            ) from error

    @staticmethod
    def _changed_entries(removals: Removals, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(position, units)``: the mask of row ``position[j]`` (``0 .. len(rows)-1``) changes at ``units[j]``."""
        if removals.groups is None:
            return torch.arange(len(rows), device=rows.device), removals.index[rows]
        members = [removals.members(int(row)) for row in rows]
        sizes = torch.tensor([len(member) for member in members], device=rows.device)
        return torch.repeat_interleave(torch.arange(len(rows), device=rows.device), sizes), torch.cat(members)

    def gradient_differences(self, removals: Removals, rows: torch.Tensor, method: str, eps: float) -> torch.Tensor:
        """``D`` of shape ``(len(rows), n_params)`` with ``delta_theta = -H^-1 D[row]`` (module notes)."""
        requested, method = method, self.route(method)
        if method == "if" and self.mask_jacobian is not None:
            differences = removals.combine(self._negated_rows, rows)
            if self._jacobian_finite:
                return differences
        elif method == "vif" and self.hooks.sparse is not None:
            position, units = self._changed_entries(removals, rows)
            values = torch.full(units.shape, 1.0 - eps, dtype=self.theta.dtype, device=self.theta.device)
            differences = self.hooks.sparse(self.unflatten(self.theta), position, units, values, len(rows)) / eps
        elif method == "vif" and self.hooks.dense is not None:
            masks = self.ones - eps * removals.directions(rows)
            differences = self.hooks.dense(self.unflatten(self.theta), masks) / eps
        elif method == "vif":
            gradient_at = grad(self.flat_objective)
            masked = self.map(lambda mask: gradient_at(self.theta, mask), self.ones - eps * removals.directions(rows))
            differences = (masked - self.full_gradient) / eps
        else:
            def mask_derivative(direction: torch.Tensor) -> torch.Tensor:
                return jvp(lambda mask: grad(self.flat_objective)(self.theta, mask), (self.ones,), (direction,))[1]

            differences = -self.map(mask_derivative, removals.directions(rows))
        finite = torch.isfinite(differences).all(dim=1)
        if not bool(finite.all()):
            bad = [removals.label(int(row)).split()[1] for row in rows[~finite][:10]]
            what = "with the unit removed" if requested == "vif" else "differentiated with respect to the mask"
            noun = "unit(s)" if removals.groups is None else "group(s)"
            raise NonFiniteError(
                f"The gradient of the objective {what} is not finite for {noun} {', '.join(bad)}"
                f"{' ...' if int((~finite).sum()) > 10 else ''}. The objective must stay finite when any "
                "unit is removed (e.g. guard empty risk sets or lists with torch.where)."
            )
        return differences
