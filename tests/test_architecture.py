"""The package's shape: import direction, module sizes, allocations that follow the inputs, the task contract."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import vif
from vif.task import is_task

SOURCE = Path(__file__).resolve().parents[1] / "src" / "vif"
EDGE_MODULES = {"cli.py", "plotting.py", "__init__.py", "__main__.py"}
ALLOCATORS = {"zeros", "ones", "eye", "empty", "full", "arange", "rand", "randn", "randint", "randperm", "tensor",
              "linspace", "logspace"}


def _modules(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.py"))


def _imported(path: Path) -> set[str]:
    """Absolute names of the vif modules ``path`` imports (relative imports resolved)."""
    package = ["vif", *path.relative_to(SOURCE).parent.parts]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names if alias.name.startswith("vif")}
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            if module.startswith("vif"):
                names.add(module)
                names |= {f"{module}.{alias.name}" for alias in node.names}
    return names


@pytest.mark.parametrize("path", [p for p in _modules(SOURCE) if p.name not in EDGE_MODULES], ids=lambda p: p.name)
def test_core_never_imports_tasks_experiments_or_datasets(path):
    bad = {name for name in _imported(path) if name.split(".")[1:2] and name.split(".")[1] in
           {"tasks", "experiments", "datasets", "plotting", "cli"}}
    assert not bad, f"core module {path.name} imports {sorted(bad)}"


@pytest.mark.parametrize("path", _modules(SOURCE / "tasks"), ids=lambda p: p.name)
def test_tasks_never_import_experiments(path):
    bad = {name for name in _imported(path) if name.startswith("vif.experiments")}
    assert not bad, f"task module {path.name} imports {sorted(bad)}"


def test_no_module_over_400_lines():
    sizes = {str(p.relative_to(SOURCE)): len(p.read_text().splitlines()) for p in SOURCE.rglob("*.py")}
    assert max(sizes.values()) <= 400, {name: size for name, size in sizes.items() if size > 400}


def test_every_allocation_names_a_device():
    """``torch.zeros(n)`` & co. without ``device=`` would put CUDA parameters' work on the CPU."""
    missing = []
    for path in SOURCE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ALLOCATORS
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"
                    and not any(keyword.arg == "device" for keyword in node.keywords)):
                missing.append(f"{path.relative_to(SOURCE)}:{node.lineno} torch.{node.func.attr}")
    assert not missing, "allocations without device=: " + ", ".join(missing)


def test_registries_are_the_folders():
    assert {"cox", "logistic", "node-embedding", "ranking"} <= set(vif.experiments.names())
    for name in vif.experiments.names():
        module = vif.experiments.load(name)
        assert callable(module.reproduce) and callable(module.add_arguments)


def _tasks():
    from vif.datasets.graphs import load_graph
    from vif.tasks import cox, embedding, logistic, pairwise, ranking

    generator = torch.Generator().manual_seed(0)
    X = torch.randn(12, 3, generator=generator, dtype=torch.float64)
    y = (X[:, 0] > 0).to(torch.float64)
    R = (torch.rand(12, 5, generator=generator, dtype=torch.float64) < 0.4).to(torch.float64)
    R[:, 0] = 1.0
    times = torch.arange(1, 13, dtype=torch.float64) * 1.5
    return [
        logistic.LogisticRegression(X, y, l2=1.0),
        pairwise.PairwiseRanking(X, torch.arange(12, dtype=torch.float64) % 3, l2=1.0),
        cox.CoxRegression(X, times, y.clone().fill_(1.0), l2=0.1),
        embedding.objective(load_graph("karate"), l2=0.3),
        ranking.ListwiseRanking(X, R, l2=1e-2),
    ]


@pytest.mark.parametrize("task", _tasks(), ids=lambda task: type(task).__name__)
def test_every_task_keeps_the_contract(task):
    assert is_task(task)
    params = task.fit()
    theta, _ = vif.params.flatten(params)
    mask = torch.ones(task.n_units, dtype=theta.dtype)
    assert task.objective(params, mask).ndim == 0
    assert vif.fit.gradient_norm(task.objective, params, mask) <= task.gtol
    mask[1] = 0.0
    refit = task.fit(mask, params)
    assert vif.fit.gradient_norm(task.objective, refit, mask) <= task.gtol


def test_leave_one_out_takes_a_task_and_records_real_metadata(tmp_path):
    from vif.tasks.logistic import LogisticRegression

    generator = torch.Generator().manual_seed(1)
    X = torch.randn(20, 2, generator=generator, dtype=torch.float64)
    task = LogisticRegression(X, (X[:, 1] > 0).to(torch.float64), l2=1.0)
    theta = task.fit()
    with_task = vif.leave_one_out(task, theta, lambda p: p["weight"], units=[0, 3], cache_dir=tmp_path, progress=False)
    bare = vif.leave_one_out(lambda mask, init: task.fit(mask, init), theta, lambda p: p["weight"], n_units=20,
                             units=[0, 3], progress=False)
    torch.testing.assert_close(with_task, bare, rtol=0, atol=1e-12)
    meta = torch.load(next(tmp_path.glob("loo-*/unit-000003.pt")), weights_only=True)["meta"]
    assert meta["converged"] is True and 0 <= meta["grad_norm"] <= task.gtol and meta["units"] == [3]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_engine_in_float32_and_float64_matches_the_closed_form(dtype):
    """Ridge regression: VIF is ``-H^-1 x_i r_i``, and dividing by ``1 - h_ii`` gives the exact refit."""
    generator = torch.Generator().manual_seed(2)
    X = torch.randn(15, 3, generator=generator, dtype=torch.float64)
    y = X @ torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64) + torch.randn(15, generator=generator, dtype=torch.float64)
    H = X.T @ X + torch.eye(3, dtype=torch.float64)
    beta = torch.linalg.solve(H, X.T @ y)
    residual = y - X @ beta
    leverage = ((X @ torch.linalg.inv(H)) * X).sum(dim=1)
    exact = []
    for unit in range(15):
        keep = torch.arange(15) != unit
        exact.append(torch.linalg.solve(X[keep].T @ X[keep] + torch.eye(3, dtype=torch.float64), X[keep].T @ y[keep]) - beta)
    Xd, yd = X.to(dtype), y.to(dtype)

    def objective(b, mask):
        return 0.5 * (mask * (yd - Xd @ b) ** 2).sum() + 0.5 * (b**2).sum()

    predicted = vif.parameter_influence(objective, beta.to(dtype), n_units=15)
    assert predicted.dtype == dtype
    tolerance = 1e-5 if dtype == torch.float32 else 1e-12
    closed_form = -torch.linalg.solve(H, (X * residual[:, None]).T).T
    torch.testing.assert_close(predicted.double(), closed_form, rtol=0, atol=tolerance)
    torch.testing.assert_close(predicted.double() / (1 - leverage)[:, None], torch.stack(exact), rtol=0,
                               atol=10 * tolerance)
