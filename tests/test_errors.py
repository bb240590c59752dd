"""Every bad input gets a precise vif exception that names the problem and the fix."""

from __future__ import annotations

import pytest
import torch

import vif
from vif.errors import (
    ConvergenceError,
    InputError,
    MaskError,
    MaskIgnoredError,
    NonFiniteError,
    NotAMinimiserError,
    NotPositiveDefiniteError,
    UnconvergedWarning,
)

N = 8
X = torch.linspace(-1, 1, N, dtype=torch.float64)[:, None] * torch.tensor([[1.0, 0.5]], dtype=torch.float64)
Y = torch.linspace(0, 2, N, dtype=torch.float64)


def ridge(beta, mask):
    vif.params.check_mask(mask, N)
    return 0.5 * (mask * (Y - X @ beta).square()).sum() + 0.5 * beta.square().sum()


BETA = vif.fit.newton(ridge, torch.zeros(2, dtype=torch.float64), torch.ones(N, dtype=torch.float64))


def target(beta):
    return beta.sum()


def test_mask_of_the_wrong_length():
    with pytest.raises(MaskError, match=r"shape \(5,\) but the objective has 8 units"):
        vif.influence(ridge, BETA, target, n_units=5)


def test_objective_that_breaks_on_the_mask_shape_names_n_units():
    def unchecked(beta, mask):
        return (mask * (Y - X @ beta).square()).sum()

    with pytest.raises(InputError, match="Does n_units equal the number of units"):
        vif.influence(unchecked, BETA, target, n_units=3)


def test_nan_objective_and_nan_target():
    with pytest.raises(NonFiniteError, match="objective"):
        vif.influence(lambda b, m: ridge(b, m) * torch.nan, BETA, target, n_units=N)
    with pytest.raises(NonFiniteError, match="target"):
        vif.influence(ridge, BETA, lambda b: b.sum() * torch.nan, n_units=N)


def test_objective_undefined_after_a_removal():
    def log_of_total(beta, mask):  # log(0) when the only weighted unit is removed
        return ridge(beta, mask) - torch.log(mask[0] * torch.exp(beta[0]))

    # at its own minimiser: a non-finite probed removal is no scale, so it no longer lets any params pass
    beta = vif.fit.newton(log_of_total, BETA, torch.ones(N, dtype=torch.float64))
    with pytest.raises(NonFiniteError, match=r"not finite for unit\(s\) 0"):
        vif.influence(log_of_total, beta, target, n_units=N)


def test_wrong_target_shape_and_type():
    with pytest.raises(InputError, match="scalar or a 1-D tensor"):
        vif.influence(ridge, BETA, lambda b: b.outer(b), n_units=N)
    with pytest.raises(InputError, match="must be callable"):
        vif.influence(ridge, BETA, 3.0, n_units=N)


def test_objective_must_return_a_scalar():
    with pytest.raises(InputError, match="scalar tensor"):
        vif.influence(lambda b, m: m * (Y - X @ b), BETA, target, n_units=N)


def test_hessian_not_positive_definite_suggests_damping():
    def concave(beta, mask):
        return -0.5 * (mask * (Y - X @ beta).square()).sum()

    with pytest.raises(NotPositiveDefiniteError, match="pass damping="):
        vif.influence(concave, BETA, target, n_units=N)


def test_iterative_solver_that_does_not_converge():
    with pytest.raises(ConvergenceError, match="CG did not converge"):
        vif.influence(ridge, BETA, target, n_units=N, hessian=vif.solvers.CG(max_iter=1, tol=1e-14))
    with pytest.raises(ConvergenceError, match="LiSSA did not converge"):
        vif.influence(ridge, BETA, target, n_units=N, hessian=vif.solvers.LiSSA(max_iter=3, tol=1e-14))


def test_unknown_names_and_bad_values():
    with pytest.raises(InputError, match="Unknown method 'newton'"):
        vif.influence(ridge, BETA, target, n_units=N, method="newton")
    with pytest.raises(InputError, match="Unknown hessian backend 'inverse'"):
        vif.influence(ridge, BETA, target, n_units=N, hessian="inverse")
    with pytest.raises(InputError, match="eps must lie in"):
        vif.influence(ridge, BETA, target, n_units=N, eps=0.0)
    with pytest.raises(InputError, match="damping must be a (finite )?number >= 0"):
        vif.influence(ridge, BETA, target, n_units=N, damping=-1.0)
    with pytest.raises(InputError, match=r"units must lie in \[0, 8\)"):
        vif.influence(ridge, BETA, target, n_units=N, units=[0, 8])
    with pytest.raises(InputError, match="n_units must be a positive int"):
        vif.influence(ridge, BETA, target, n_units=0)
    with pytest.raises(InputError, match="float32 or float64"):
        vif.influence(ridge, BETA.long(), target, n_units=N)
    with pytest.raises(InputError, match="tensor or a dict of tensors"):
        vif.influence(ridge, BETA.numpy(), target, n_units=N)


def test_objective_that_ignores_the_mask():
    def no_mask(beta, mask):
        return 0.5 * (Y - X @ beta).square().sum() + 0.5 * beta.square().sum()

    beta = vif.fit.newton(no_mask, torch.zeros(2, dtype=torch.float64), torch.ones(N, dtype=torch.float64))
    for method in ("vif", "if"):
        with pytest.raises(MaskIgnoredError, match="ignores its mask"):
            vif.influence(no_mask, beta, target, n_units=N, method=method)
        with pytest.raises(MaskIgnoredError):
            vif.parameter_influence(no_mask, beta, n_units=N, method=method)


def test_fits_raise_when_they_do_not_converge():
    ones = torch.ones(N, dtype=torch.float64)
    with pytest.raises(ConvergenceError, match="Newton did not converge in 0 iterations"):
        vif.fit.newton(ridge, torch.zeros(2, dtype=torch.float64), ones, max_iter=0)
    with pytest.raises(ConvergenceError, match="L-BFGS did not converge"):
        vif.fit.lbfgs(ridge, torch.zeros(2, dtype=torch.float64), ones, max_iter=1, gtol=1e-15)
    with pytest.raises(InputError, match="mask must be a 1-D float tensor"):
        vif.fit.newton(ridge, torch.zeros(2, dtype=torch.float64), torch.ones(N, dtype=torch.long))


def test_mask_checks():
    with pytest.raises(MaskError, match="dtype torch.int64"):
        vif.params.check_mask(torch.ones(N, dtype=torch.long), N)
    with pytest.raises(MaskError, match="must be a torch.Tensor"):
        vif.params.check_mask([1.0] * N, N)


# ---- issue 11: never a silent wrong number -------------------------------------------------------------------


def _unconverged(objective, beta, size):
    """``beta`` moved so that ``max|grad objective(., 1)| == size`` (a Newton step backwards)."""
    ones = torch.ones(N, dtype=torch.float64)
    hessian = torch.func.hessian(lambda b: objective(b, ones))(beta)
    direction = torch.linalg.solve(hessian, torch.tensor([1.0, -0.5], dtype=torch.float64))
    moved = beta + direction
    scale = size / float(torch.func.grad(lambda b: objective(b, ones))(moved).abs().max())
    return beta + scale * direction


def test_params_that_are_not_a_minimiser_raise_naming_the_gradient_and_the_remedy():
    far = _unconverged(ridge, BETA, 1e-3)
    for call in (lambda **o: vif.influence(ridge, far, target, n_units=N, **o),
                 lambda **o: vif.parameter_influence(ridge, far, n_units=N, **o),
                 lambda **o: vif.leave_one_out(lambda m, i: vif.fit.newton(ridge, BETA, m), far, target, n_units=N,
                                               objective=ridge, progress=False, **o)):
        with pytest.raises(NotAMinimiserError, match=r"max\|grad L\(params, 1\)\| = 1\.000e-03.*on_unconverged='warn'"):
            call()
        with pytest.warns(UnconvergedWarning, match="not a minimiser"):
            call(on_unconverged="warn")
    assert vif.influence(ridge, _unconverged(ridge, BETA, 1e-9), target, n_units=N).shape == (N,)


def test_the_stationarity_rule_is_the_same_for_a_summed_and_a_mean_objective():
    def mean(beta, mask):
        return ridge(beta, mask) / N

    with pytest.raises(NotAMinimiserError):
        vif.influence(mean, _unconverged(ridge, BETA, 1e-3), target, n_units=N)  # max|grad| of the mean: 1.25e-4
    assert vif.influence(mean, _unconverged(ridge, BETA, 1e-8), target, n_units=N).shape == (N,)


def test_every_task_fit_passes_the_stationarity_check():
    from vif.datasets.tabular import breast_cancer
    from vif.tasks import cox, logistic

    data = breast_cancer(seed=0)
    task = logistic.LogisticRegression(data.X_train[:80], data.y_train[:80])
    vif.influence(task, task.fit(), lambda p: p["bias"], units=[0, 1])
    generator = torch.Generator().manual_seed(0)
    X = torch.randn(40, 3, generator=generator, dtype=torch.float64)
    time = torch.rand(40, generator=generator, dtype=torch.float64) + 0.1
    event = (torch.rand(40, generator=generator) < 0.7).to(torch.float64)
    survival = cox.CoxRegression(X, time, event, l2=0.1)
    vif.influence(survival, survival.fit(), lambda b: b.sum(), units=[0, 1])


def test_a_target_with_an_identically_zero_gradient_raises():
    with pytest.raises(InputError, match="gradient with respect to params is exactly zero"):
        vif.influence(ridge, BETA, lambda beta: beta.detach().sum(), n_units=N)


def test_half_precision_params_say_what_is_supported():
    for dtype in (torch.float16, torch.bfloat16):
        with pytest.raises(InputError, match="half precision.*float64"):
            vif.influence(ridge, BETA.to(dtype), target, n_units=N)


def test_params_and_data_of_different_dtypes_name_the_dtypes_not_n_units():
    with pytest.raises(InputError, match="dtype mismatch: params are torch.float32") as error:
        vif.influence(lambda b, m: (m * (Y - X @ b).square()).sum(), BETA.float(), target, n_units=N)
    assert "n_units is not the cause" in str(error.value)


def test_objectives_that_leave_torch_or_write_into_the_mask():
    def with_numpy(beta, mask):
        return torch.as_tensor((Y - X @ beta).detach().numpy()).square().sum() * mask.sum()

    def in_place(beta, mask):
        mask[0] = 0.0
        return ridge(beta, mask)

    def branches_on_the_mask(beta, mask):
        return ridge(beta, mask) if mask.sum().item() > 0 else ridge(beta, mask) * 0

    with pytest.raises(InputError, match="leaves torch"):
        vif.influence(with_numpy, BETA, target, n_units=N)
    with pytest.raises(InputError, match="in place"):
        vif.influence(in_place, BETA, target, n_units=N)
    with pytest.raises(InputError, match="vectorize=False"):
        vif.influence(branches_on_the_mask, BETA, target, n_units=N)


def test_a_target_whose_second_argument_is_not_a_mask_says_how_to_declare_it():
    def pick(beta, index):
        return beta[index]

    with pytest.raises(InputError, match="target_takes_mask=False"):
        vif.influence(ridge, BETA, pick, n_units=N)


@pytest.mark.parametrize("chunk_size", [0, -3, 2.5, True, "8"])
def test_chunk_size_must_be_a_positive_int(chunk_size):
    with pytest.raises(InputError, match="chunk_size must be a positive int"):
        vif.influence(ridge, BETA, target, n_units=N, chunk_size=chunk_size)


def test_empty_units_are_an_error_everywhere():
    with pytest.raises(InputError, match="units is empty"):
        vif.influence(ridge, BETA, target, n_units=N, units=[])
    with pytest.raises(InputError, match="units is empty"):
        vif.leave_one_out(lambda m, i: BETA, BETA, target, n_units=N, units=[], progress=False)


def test_unit_params_are_checked_for_every_unit_used():
    def per_unit(theta, mask):  # theta = [w (2), a_0 .. a_{N-1}]: a_i is unit i's own offset
        residual = Y - X @ theta[:2] - theta[2:]
        return 0.5 * (mask * residual.square()).sum() + 0.5 * theta.square().sum()

    theta = vif.fit.newton(per_unit, torch.zeros(N + 2, dtype=torch.float64), torch.ones(N, dtype=torch.float64))
    own = [[2 + unit] for unit in range(N)]
    vif.influence(per_unit, theta, lambda t: t[:2].sum(), n_units=N, unit_params=own)  # a true claim
    own[5] = [0, 7]  # unit 5 also claims the shared weight w_0
    for units in (None, [5], [1, 5]):
        with pytest.raises(InputError, match="unit_params of unit 5 are still coupled"):
            vif.influence(per_unit, theta, lambda t: t[:2].sum(), n_units=N, unit_params=own, units=units)


def test_relative_damping_means_the_same_for_a_summed_and_a_mean_objective():
    def mean(beta, mask):
        return ridge(beta, mask) / N

    relative = vif.solvers.relative(1e-1)
    summed = vif.parameter_influence(ridge, BETA, n_units=N, damping=relative)
    averaged = vif.parameter_influence(mean, BETA, n_units=N, damping=relative)
    assert torch.allclose(summed, averaged, atol=1e-12)
    absolute = [vif.parameter_influence(f, BETA, n_units=N, damping=1e-1) for f in (ridge, mean)]
    assert not torch.allclose(absolute[0], absolute[1], atol=1e-6)
    hessian = torch.func.hessian(lambda b: ridge(b, torch.ones(N, dtype=torch.float64)))(BETA)
    by_hand = vif.parameter_influence(ridge, BETA, n_units=N, damping=0.1 * float(hessian.trace()) / 2)
    assert torch.allclose(summed, by_hand, atol=1e-12)
    iterative = vif.parameter_influence(ridge, BETA, n_units=N, damping=relative, hessian="cg")
    assert torch.allclose(iterative, summed, atol=0.05 * float(summed.abs().max()))  # Hutchinson trace
    with pytest.raises(InputError, match="fraction >= 0"):
        vif.solvers.relative(-1.0)


def test_float32_fits_default_to_a_float32_tolerance_and_name_float32_when_too_tight():
    ones = torch.ones(N, dtype=torch.float32)
    X32, Y32 = X.float(), Y.float()
    fitted = vif.fit.newton(lambda b, m: 0.5 * (m * (Y32 - X32 @ b).square()).sum() + 0.5 * b.square().sum(),
                            torch.zeros(2, dtype=torch.float32), ones)
    assert fitted.dtype == torch.float32
    assert vif.fit.default_gtol("newton", torch.float32) > vif.fit.default_gtol("newton", torch.float64)

    def noisy(beta, mask):  # float32 rounding: the gradient cannot get below ~1e-6 here
        return (mask[:, None] * (torch.linspace(-1, 1, N, dtype=torch.float32)[:, None] * 1e3 - beta * 1e3).square()).sum() / 1e3

    with pytest.raises(ConvergenceError, match="float32"):
        vif.fit.newton(noisy, torch.zeros(1, dtype=torch.float32), ones, gtol=1e-12)


def test_the_unit_params_check_can_be_skipped_explicitly():
    def per_unit(theta, mask):
        residual = Y - X @ theta[:2] - theta[2:]
        return 0.5 * (mask * residual.square()).sum() + 0.5 * theta.square().sum()

    theta = vif.fit.newton(per_unit, torch.zeros(N + 2, dtype=torch.float64), torch.ones(N, dtype=torch.float64))
    own = [[2 + unit] for unit in range(N)]
    checked = vif.influence(per_unit, theta, lambda t: t[:2].sum(), n_units=N, unit_params=own)
    unchecked = vif.influence(per_unit, theta, lambda t: t[:2].sum(), n_units=N, unit_params=own,
                              check_unit_params=False)
    assert torch.equal(checked, unchecked)
