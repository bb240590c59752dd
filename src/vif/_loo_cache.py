"""The leave-one-out cache: folder keys that hash the data and every fit setting, atomic entries, checked loads.

A cache folder is keyed by a SHA-256 of everything a refit depends on: the bytes of ``theta_hat``; the fit's code
(qualified name, bytecode, constants); the *contents* of what the fit reads (every tensor, array and number
reachable from its closure cells, default and partial arguments, the globals its code names and, for a bound
method, its object: public attributes, dataclass fields and nested configs, recursively to :data:`MAX_DEPTH`); the
same for ``objective``; the task's ``gtol``; and the objective's values at ``theta_hat`` under a few fixed masks
(:func:`objective_fingerprint`). A ``torch.nn.Module`` counts by its structure, parameter shapes and buffers, not
its parameter values: a task passes its own parameters (``torch.func.functional_call``), and an encoder built
with torch's unseeded default initialisation would change the key in every process (frozen weights that the
objective uses still reach the key through the fingerprint). Private names (``_name``: attributes, closure
variables, globals) are not hashed: by convention they hold lazily built caches (a factorised Hessian) or
bookkeeping (a call log), which would change the key between runs; keep data under public names. Cost: one pass
over the data's bytes (about 1 GB/s), once per call.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import types
import uuid
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import CacheWarning, InputError
from .params import Params, flatten

__all__ = ["objective_fingerprint", "fit_identity", "data_digest", "cache_folder", "check_cache_dir", "save",
           "load", "entry_name", "MAX_DEPTH"]

MAX_DEPTH = 6  # nesting levels of containers and objects that are hashed (task -> config -> field -> ...)
_OPAQUE = (types.ModuleType, type, torch.Generator, types.BuiltinFunctionType)
_FUNCTIONS = (types.FunctionType, types.MethodType, functools.partial)


def _tag(digest: Any, text: str) -> None:
    digest.update(text.encode() + b"\0")


def _feed_tensor(digest: Any, value: torch.Tensor) -> None:
    tensor = value.detach()
    if tensor.is_sparse:
        tensor = tensor.coalesce()
        _tag(digest, f"sparse:{tuple(tensor.shape)}")
        _feed_tensor(digest, tensor.indices())
        _feed_tensor(digest, tensor.values())
        return
    try:
        tensor = tensor.to_dense() if tensor.layout != torch.strided else tensor
        tensor = tensor.resolve_conj().resolve_neg().cpu().contiguous()
        _tag(digest, f"tensor:{tensor.dtype}:{tuple(tensor.shape)}")
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    except (RuntimeError, TypeError, NotImplementedError):  # meta or quantized tensors: their description only
        _tag(digest, f"tensor:{value.dtype}:{tuple(value.shape)}:{value.layout}")


def _feed_array(digest: Any, value: np.ndarray, depth: int, seen: frozenset[int]) -> None:
    _tag(digest, f"ndarray:{value.dtype.str}:{value.shape}")
    if value.dtype.hasobject:  # object arrays hold pointers: hash the elements
        _feed(digest, value.tolist(), depth - 1, seen)
    else:
        digest.update(np.ascontiguousarray(value).tobytes())


def _public_attributes(value: object) -> list[tuple[str, object]]:
    """Dataclass fields (private ones only if set by ``__init__``), else public ``__dict__``/``__slots__`` entries."""
    if dataclasses.is_dataclass(value):
        return [(field.name, getattr(value, field.name, None)) for field in dataclasses.fields(value)
                if field.init or not field.name.startswith("_")]
    attributes = dict(vars(value)) if hasattr(value, "__dict__") else {}
    for cls in type(value).__mro__:
        for name in getattr(cls, "__slots__", ()):
            if hasattr(value, name):
                attributes.setdefault(name, getattr(value, name))
    lazy = {name for name in attributes if isinstance(getattr(type(value), name, None), functools.cached_property)}
    return sorted((name, item) for name, item in attributes.items() if not name.startswith("_") and name not in lazy)


def _code_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for constant in code.co_consts:
        if isinstance(constant, types.CodeType):
            names |= _code_names(constant)
    return names


def _code_digest(code: types.CodeType) -> str:
    """A hash of a function's bytecode, constants and global names, the same in every process.

    Nested functions are hashed recursively (the ``repr`` of a code object holds its memory address) and set
    constants through their sorted elements (their ``repr`` order changes with the string hash seed).
    """
    digest = hashlib.sha256(code.co_code)
    _tag(digest, repr(code.co_names))
    for constant in code.co_consts:
        if isinstance(constant, types.CodeType):
            _tag(digest, _code_digest(constant))
        else:
            _feed(digest, constant, 2, frozenset())
    return digest.hexdigest()[:16]


def _feed_function(digest: Any, function: Callable, depth: int, seen: frozenset[int], full: bool) -> None:
    """Feed a function's name and code; with ``full`` also what it reads.

    That is its closure cells, defaults, partial arguments, the object of a bound method and the globals its code
    names (data only: functions, classes and modules there count by name).
    """
    if isinstance(function, functools.partial):
        _tag(digest, "partial")
        _feed_function(digest, function.func, depth, seen, full)
        _feed(digest, list(function.args), depth - 1, seen)
        _feed(digest, dict(function.keywords), depth - 1, seen)
        return
    if isinstance(function, types.MethodType):
        _tag(digest, "method")
        _feed(digest, function.__self__, depth - 1, seen)
        function = function.__func__
    code = getattr(function, "__code__", None)
    _tag(digest, f"{getattr(function, '__module__', '?')}.{getattr(function, '__qualname__', type(function).__name__)}")
    if code is None:
        return
    _tag(digest, _code_digest(code))
    if not full:
        return
    _feed(digest, [getattr(function, "__defaults__", None), getattr(function, "__kwdefaults__", None)], depth - 1, seen)
    for name, cell in zip(code.co_freevars, getattr(function, "__closure__", None) or (), strict=False):
        try:
            contents = cell.cell_contents
        except ValueError:  # an empty cell
            contents = "<empty cell>"
        if not name.startswith("_"):
            _tag(digest, f"cell {name}")
            _feed(digest, contents, depth - 1, seen, full=True)
    module_globals = getattr(function, "__globals__", {})
    for name in sorted(_code_names(code)):
        if (name in module_globals and not name.startswith("_")
                and not isinstance(module_globals[name], _OPAQUE + _FUNCTIONS)):
            _tag(digest, f"global {name}")
            _feed(digest, module_globals[name], depth - 1, seen)


def _feed(digest: Any, value: object, depth: int, seen: frozenset[int], full: bool = False) -> None:
    """Feed ``value``'s type and contents into ``digest`` (recursively, ``depth`` levels, cycles cut)."""
    if value is None or isinstance(value, bool | int | float | complex | str):
        _tag(digest, f"{type(value).__name__}:{value!r}")
    elif isinstance(value, bytes | bytearray):
        _tag(digest, f"bytes:{len(value)}")
        digest.update(bytes(value))
    elif isinstance(value, torch.Tensor):
        _feed_tensor(digest, value)
    elif isinstance(value, np.ndarray):
        _feed_array(digest, value, depth, seen)
    elif isinstance(value, np.generic | torch.dtype | torch.device):
        _tag(digest, f"{type(value).__name__}:{value!r}")
    elif isinstance(value, _OPAQUE):  # modules, classes; a generator's state changes as it is used
        _tag(digest, f"{type(value).__name__}:{getattr(value, '__qualname__', getattr(value, '__name__', ''))}")
    elif depth <= 0 or id(value) in seen:
        _tag(digest, f"<{type(value).__qualname__}: {'cycle' if id(value) in seen else 'deeper than MAX_DEPTH'}>")
    else:
        _feed_container(digest, value, depth, seen | {id(value)}, full)


def _feed_container(digest: Any, value: object, depth: int, seen: frozenset[int], full: bool) -> None:
    if isinstance(value, _FUNCTIONS):
        _feed_function(digest, value, depth, seen, full)
    elif isinstance(value, Mapping):
        _tag(digest, f"{type(value).__qualname__}:{len(value)}")
        for key_digest, key in sorted(((data_digest(key, 2), key) for key in value), key=lambda pair: pair[0]):
            _tag(digest, key_digest)
            _feed(digest, value[key], depth - 1, seen, full)
    elif isinstance(value, list | tuple):
        _tag(digest, f"{type(value).__qualname__}:{len(value)}")
        for item in value:
            _feed(digest, item, depth - 1, seen, full)
    elif isinstance(value, set | frozenset):
        _tag(digest, f"{type(value).__qualname__}:" + ",".join(sorted(data_digest(item, depth - 1) for item in value)))
    elif isinstance(value, torch.nn.Module):  # its weights are a template (tasks pass their own parameters)
        _tag(digest, f"module:{type(value).__qualname__}:{value!r}")
        for name, parameter in value.named_parameters():
            _tag(digest, f"{name}:{parameter.dtype}:{tuple(parameter.shape)}")
        _feed(digest, dict(value.named_buffers()), depth - 1, seen)
    elif callable(getattr(value, "to_numpy", None)) and hasattr(value, "shape"):  # pandas, polars, xarray
        _tag(digest, f"{type(value).__qualname__}:{list(getattr(value, 'columns', []))!r}")
        _feed(digest, np.asarray(value.to_numpy()), depth - 1, seen)
    else:
        _tag(digest, f"object:{type(value).__module__}.{type(value).__qualname__}")
        if callable(value) and not isinstance(value, type):
            _feed_function(digest, type(value).__call__, depth - 1, seen, False)
        for name, item in _public_attributes(value):
            _tag(digest, f".{name}")
            _feed(digest, item, depth - 1, seen)


def data_digest(value: object, depth: int = MAX_DEPTH) -> str:
    """SHA-256 (20 hex digits) of ``value``'s type and contents.

    Tensors and arrays count by their bytes; containers, dataclasses and objects (public attributes) recursively;
    functions by code and (at the top level and in closures) the data they read.
    """
    digest = hashlib.sha256()
    _feed(digest, value, depth, frozenset(), full=True)
    return digest.hexdigest()[:20]


def fit_identity(fit: Callable) -> dict[str, Any]:
    """The fit's qualified name, a hash of its code, and a hash of the data and settings it reads."""
    function = getattr(fit, "func", fit)  # functools.partial
    function = getattr(function, "__func__", function)  # bound method
    code = getattr(function, "__code__", None)
    name = getattr(function, "__qualname__", type(function).__name__)
    return {"name": f"{getattr(function, '__module__', '?')}.{name}",
            "code": _code_digest(code) if code else None, "data": data_digest(fit)}


def objective_fingerprint(objective: Callable, params: Params, n_units: int, n_masks: int = 3) -> list[str]:
    """The objective's values at ``theta_hat`` under the full mask and ``n_masks`` fixed random masks (10 digits).

    A backstop of the cache key for data :func:`data_digest` cannot reach (private attributes). The masks come
    from a seeded CPU generator (half the units kept).
    """
    theta, _ = flatten(params)
    generator = torch.Generator(device="cpu").manual_seed(0)
    masks = [torch.ones(n_units, dtype=theta.dtype, device="cpu")]
    masks += [(torch.rand(n_units, generator=generator, device="cpu") < 0.5).to(theta.dtype) for _ in range(n_masks)]
    values = []
    with torch.no_grad():
        for mask in masks:
            try:
                values.append(f"{float(objective(params, mask.to(theta.device))):.10g}")
            except Exception as error:  # noqa: BLE001 (a mask the objective rejects still identifies it)
                values.append(f"error: {type(error).__name__}")
    return values


def check_cache_dir(cache_dir: str | os.PathLike) -> Path:
    """``cache_dir`` as a path; :class:`InputError` if it names a file (checked before any refit)."""
    path = Path(cache_dir)
    if path.exists() and not path.is_dir():
        raise InputError(f"cache_dir {str(path)!r} is a file, not a folder. Pass a folder (created if missing), e.g. "
                         f"{str(path.with_suffix(''))!r}-cache, or cache_dir=None to refit without a cache.")
    return path


def cache_folder(cache_dir: Path, description: dict[str, Any], theta: torch.Tensor) -> Path:
    """Create (if needed) the folder keyed by ``theta``'s bytes and ``description``; write the description.

    Raises:
        InputError: the folder cannot be created or written (read-only, no permission, disk full).
    """
    digest = hashlib.sha256()
    _feed_tensor(digest, theta)
    digest.update(json.dumps(description, sort_keys=True).encode())
    folder = cache_dir / f"loo-{digest.hexdigest()[:20]}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _atomic_write(folder / "description.json",
                      lambda path: path.write_text(json.dumps(description, indent=2, sort_keys=True)))
    except OSError as error:
        raise InputError(f"cache_dir {str(cache_dir)!r} cannot be written ({type(error).__name__}: {error}). Pass a "
                         "writable folder, or cache_dir=None to refit without a cache.") from error
    return folder


def _atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Write through a temporary file unique to this process and call, then rename it over ``path``."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def entry_name(removed: tuple[int, ...]) -> str:
    """The file of one removal's refit in a cache folder."""
    if len(removed) == 1:
        return f"unit-{removed[0]:06d}.pt"
    return f"group-{hashlib.sha256(json.dumps(list(removed)).encode()).hexdigest()[:20]}.pt"


def save(path: Path, theta: torch.Tensor, meta: dict[str, Any]) -> None:
    """Write one refit and its metadata atomically (raises ``OSError`` as the file system does)."""
    _atomic_write(path, lambda temporary: torch.save({"theta": theta, "meta": meta}, temporary))


def load(path: Path, removed: tuple[int, ...], n_params: int) -> torch.Tensor | None:
    """A cached refit, or ``None`` with a :class:`CacheWarning` naming the file.

    ``None`` when the entry is unreadable, truncated, written for another removal or parameter shape, or records
    a refit that did not converge (``meta["converged"] is False``): such an entry is never returned as truth.
    """
    try:
        entry = torch.load(path, weights_only=True)
        theta, meta = entry["theta"], entry["meta"]
        if not isinstance(theta, torch.Tensor) or theta.shape != (n_params,) or not theta.is_floating_point():
            raise ValueError(f"parameters of shape {tuple(getattr(theta, 'shape', ()))}, expected ({n_params},)")
        if [int(unit) for unit in meta["units"]] != list(removed):
            raise ValueError(f"written for unit(s) {meta['units']}, expected {list(removed)}")
        if not bool(torch.isfinite(theta).all()):
            raise ValueError("non-finite parameters")
        if meta.get("converged") is False:
            raise ValueError(f"the refit did not converge (max|grad| = {meta.get('grad_norm')})")
    except Exception as error:  # noqa: BLE001 (any unusable entry is recomputed)
        warnings.warn(f"leave_one_out: cache entry {path} is unusable ({type(error).__name__}: {error}); "
                      "recomputing it.", CacheWarning, stacklevel=4)
        return None
    return theta
