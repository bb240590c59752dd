"""External data files: the cache folder, checksums, and the error that says how to get a file.

The cache folder is ``$VIF_DATA_DIR`` if set, else ``~/.cache/vif``. Nothing is downloaded: a loader
for data that cannot ship with the package looks for the file there (or at an explicit path), checks its
SHA-256 when the expected digest is known, and otherwise raises :class:`~vif.errors.DatasetNotFoundError`
with instructions.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ..errors import DatasetNotFoundError, InputError

__all__ = ["data_dir", "sha256", "locate", "check_text", "check_seed", "check_fraction"]


def check_seed(seed: object) -> int:
    """``seed`` as an int, after checking that it is a non-negative integer.

    ``numpy.random.default_rng`` and networkx accept those; a bad seed now fails before any data is read.

    Raises:
        InputError: ``seed`` is a bool, not an integer, or negative.
    """
    if isinstance(seed, bool) or not hasattr(seed, "__index__"):
        raise InputError(f"seed must be a non-negative integer, got {seed!r}.")
    if int(seed) < 0:
        raise InputError(f"seed must be a non-negative integer, got {seed!r}.")
    return int(seed)


def check_fraction(value: object, name: str) -> float:
    """``value`` as a float strictly between 0 and 1 (a share of the rows held out).

    Raises:
        InputError: not a real number, NaN, or outside ``(0, 1)``.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{name} must be a number in (0, 1), got {value!r}.")
    if not 0.0 < float(value) < 1.0:
        raise InputError(f"{name} must lie in (0, 1) (the share of rows held out), got {value!r}.")
    return float(value)


def data_dir() -> Path:
    """The cache folder for external datasets: ``$VIF_DATA_DIR`` or ``~/.cache/vif``."""
    return Path(os.environ.get("VIF_DATA_DIR", Path.home() / ".cache" / "vif")).expanduser()


def sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 digest of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def locate(
    filename: str,
    *,
    dataset: str,
    how_to_get: str,
    path: str | os.PathLike | None = None,
    expected_sha256: str | None = None,
) -> Path:
    """Find an external data file and verify it.

    Args:
        filename: the file's name inside the cache folder.
        dataset: human-readable dataset name for messages.
        how_to_get: instructions (source, licence) shown when the file is missing.
        path: explicit file path; overrides the cache folder.
        expected_sha256: digest to check, or ``None`` to skip the check (fixtures, user files).

    Returns:
        The path of the verified file.

    Raises:
        DatasetNotFoundError: the file is missing; the message says where it was looked for and how to get it.
        InputError: the file's checksum differs from the expected one.
    """
    candidate = Path(path) if path is not None else data_dir() / filename
    if not candidate.is_file():
        raise DatasetNotFoundError(
            f"{dataset}: file not found at {candidate}. It cannot ship with vif and is never downloaded at "
            f"run time. {how_to_get} Save it as {data_dir() / filename} (or set VIF_DATA_DIR, or pass path=)."
        )
    if expected_sha256 is not None:
        found = sha256(candidate)
        if found != expected_sha256:
            raise InputError(
                f"{dataset}: {candidate} has SHA-256 {found}, expected {expected_sha256}. The file is "
                "corrupt or a different version; download it again from the source named in the docs."
            )
    return candidate


def check_text(path: Path, label: str, hint: str) -> None:
    """Raise :class:`InputError` for an empty file or the line of its first byte that is not UTF-8.

    ``label`` names the file in the message (e.g. ``"METABRIC file"``); ``hint`` says how to produce a good one.
    """
    data = path.read_bytes()
    if not data.strip():
        raise InputError(f"{label} {path}, line 1: the file is empty; {hint}")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b"\n") + 1
        raise InputError(f"{label} {path}, line {line}: not UTF-8 text ({error.reason} at byte {error.start}); "
                         f"{hint}") from error
