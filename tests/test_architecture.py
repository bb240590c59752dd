"""The package's shape: import direction and no import circles, module sizes, allocations that follow the inputs,
the task contract on every task class the code defines."""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import vif
import vif.tasks
from vif.task import is_task

SOURCE = Path(__file__).resolve().parents[1] / "src" / "vif"
EDGE_MODULES = {"cli.py", "plotting.py", "__init__.py", "__main__.py"}
ALLOCATORS = {"zeros", "ones", "eye", "empty", "full", "arange", "rand", "randn", "randint", "randperm", "tensor",
              "linspace", "logspace"}


def _modules(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.py"))


def _module_name(path: Path) -> str:
    """``src/vif/tasks/cox.py`` -> ``vif.tasks.cox``; a package's ``__init__.py`` is the package."""
    parts = ["vif", *path.relative_to(SOURCE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


PACKAGE_MODULES = {_module_name(path) for path in SOURCE.rglob("*.py")}


def _imported(path: Path) -> set[str]:
    """The vif modules ``path`` imports anywhere, lazy imports inside functions included.

    Relative imports are resolved; ``from pkg import name`` is an import of the module ``pkg.name`` when there
    is one (``from .. import errors`` imports ``vif.errors``, not the package ``vif``), else of ``pkg``.
    """
    package = ["vif", *path.relative_to(SOURCE).parent.parts]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names if alias.name.split(".")[0] == "vif"}
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            if module.split(".")[0] == "vif":
                names |= {f"{module}.{alias.name}" if f"{module}.{alias.name}" in PACKAGE_MODULES else module
                          for alias in node.names}
    return names


def _import_graph() -> dict[str, set[str]]:
    """Every module of the package -> the package's modules it imports."""
    return {_module_name(path): _imported(path) & PACKAGE_MODULES for path in SOURCE.rglob("*.py")}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One shortest import circle per strongly connected component (Tarjan), e.g. ``[a, b, a]``."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for child in sorted(graph.get(node, ())):
            if child not in index:
                connect(child)
                low[node] = min(low[node], low[child])
            elif child in on_stack:
                low[node] = min(low[node], index[child])
        if low[node] == index[node]:
            component, top = set(), None
            while top != node:
                top = stack.pop()
                on_stack.discard(top)
                component.add(top)
            components.append(component)

    for node in sorted(graph):
        if node not in index:
            connect(node)
    cycles = []
    for component in components:
        start = min(component)
        if len(component) == 1 and start not in graph.get(start, ()):
            continue
        paths, seen = [[start]], set()  # breadth-first inside the component back to start
        while paths:
            path = paths.pop(0)
            children = sorted(graph[path[-1]] & component)
            if start in children:
                cycles.append([*path, start])
                break
            for child in children:
                if child not in seen:
                    seen.add(child)
                    paths.append([*path, child])
    return sorted(cycles)


def test_the_cycle_finder_names_each_circle():
    graph = {"a": {"b"}, "b": {"c", "a"}, "c": {"b"}, "d": {"d"}, "e": {"a"}}
    assert _cycles(graph) == [["a", "b", "a"], ["d", "d"]]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_no_import_circle_anywhere():
    """If module A needs a helper of B and B imports A (even lazily, inside a function), the helper moves."""
    cycles = _cycles(_import_graph())
    assert not cycles, "import circles (move the shared helper into a third module):\n" + "\n".join(
        " -> ".join(cycle) for cycle in cycles)


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


def _small_data() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    X = torch.randn(12, 3, generator=generator, dtype=torch.float64)
    relevance = (torch.rand(12, 5, generator=generator, dtype=torch.float64) < 0.4).to(torch.float64)
    relevance[:, 0] = 1.0
    views = torch.stack([X, X + 0.1 * torch.randn(12, 3, generator=generator, dtype=torch.float64)])
    return {"X": X, "y": (X[:, 0] > 0).to(torch.float64), "relevance": relevance, "views": views,
            "times": torch.arange(1, 13, dtype=torch.float64) * 1.5, "events": torch.ones(12, dtype=torch.float64)}


def _task_instances() -> dict[type, Callable[[dict[str, torch.Tensor]], object]]:
    """One small instance of every task class (``vif.tasks.task_classes()``), built from ``_small_data()``.

    A new task class gets its entry here: ``test_every_task_class_has_a_small_instance`` fails until it does.
    """
    from vif.datasets.graphs import load_graph
    from vif.tasks import contrastive, cox, embedding, logistic, neural_cox, pairwise, ranking

    return {
        logistic.LogisticRegression: lambda d: logistic.LogisticRegression(d["X"], d["y"], l2=1.0),
        pairwise.PairwiseRanking: lambda d: pairwise.PairwiseRanking(d["X"], torch.arange(12, dtype=torch.float64) % 3,
                                                                     l2=1.0),
        cox.CoxRegression: lambda d: cox.CoxRegression(d["X"], d["times"], d["events"], l2=0.1),
        embedding.SkipGram: lambda d: embedding.objective(load_graph("karate"), l2=0.3),
        ranking.ListwiseRanking: lambda d: ranking.ListwiseRanking(d["X"], d["relevance"], l2=1e-2),
        neural_cox.NeuralCox: lambda d: neural_cox.NeuralCox(d["X"], d["times"], d["events"], hidden=(2,),
                                                             weight_decay=1.0, gtol=1e-8),
        contrastive.Contrastive: lambda d: contrastive.Contrastive(d["views"], contrastive.encoder("linear", 3, 2),
                                                                   weight_decay=0.1, gtol=1e-8),
    }


TASK_CLASSES = vif.tasks.task_classes()


def test_every_task_class_has_a_small_instance():
    """The contract test below runs on every task class the code defines, not on a list kept by hand."""
    built = _task_instances()
    missing = [f"{cls.__module__}.{cls.__qualname__}" for cls in TASK_CLASSES if cls not in built]
    assert not missing, (f"task classes without a small instance: {missing}; add one to _task_instances() in "
                         "tests/test_architecture.py")
    stale = [cls.__qualname__ for cls in built if cls not in TASK_CLASSES]
    assert not stale, f"_task_instances() builds classes that vif.tasks.task_classes() does not find: {stale}"


DEFAULT_GTOL = 1e-6  # the fit tolerance checked for a task that declares no gtol


@pytest.mark.parametrize("cls", TASK_CLASSES, ids=lambda cls: cls.__qualname__)
def test_every_task_keeps_the_contract(cls):
    build = _task_instances().get(cls)
    if build is None:
        pytest.fail(f"{cls.__qualname__} has no small instance: add one to _task_instances()")
    task = build(_small_data())
    assert type(task) is cls and is_task(task)
    params = task.fit()
    theta, _ = vif.params.flatten(params)
    mask = torch.ones(task.n_units, dtype=theta.dtype)
    assert task.objective(params, mask).ndim == 0
    gtol = getattr(task, "gtol", DEFAULT_GTOL)  # optional in the contract
    assert vif.fit.gradient_norm(task.objective, params, mask) <= gtol
    mask[1] = 0.0
    refit = task.fit(mask, params)
    assert vif.fit.gradient_norm(task.objective, refit, mask) <= gtol


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
