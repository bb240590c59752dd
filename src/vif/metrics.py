"""Agreement between predicted and actual changes (correlations, relative error) and ranking quality (nDCG).

The paper's metric: for each test target, correlate predicted and actual changes across the removed
units, then average over targets (``across="units"``). ``across="targets"`` correlates, for each removed
unit, across targets. A column with (numerically) constant values has no correlation: it is reported in
``n_constant`` and left out of the mean rather than turning it into NaN. Entries marked ``False`` in
``valid`` (e.g. a target undefined after a removal) are excluded and counted in ``n_excluded``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import rankdata

from .errors import InputError

__all__ = ["Correlations", "correlations", "lds", "relative_error", "ndcg", "roc_auc"]


@dataclass(frozen=True)
class Correlations:
    """Mean correlations and what went into them.

    Attributes:
        pearson: mean Pearson correlation over the groups that have one (NaN only if none has).
        spearman: mean Spearman correlation over the same groups.
        pearson_each: per-group Pearson, NaN for a constant or too-small group, shape ``(n_groups,)``.
        spearman_each: per-group Spearman, likewise.
        n_used: groups that entered the means.
        n_constant: groups left out because predicted or actual values were constant or fewer than 3.
        n_excluded: individual entries left out because ``valid`` was ``False``.
    """

    pearson: float
    spearman: float
    pearson_each: np.ndarray
    spearman_each: np.ndarray
    n_used: int
    n_constant: int
    n_excluded: int

    def as_dict(self) -> dict[str, float | int]:
        """The scalar fields, for JSON results."""
        return {"pearson": self.pearson, "spearman": self.spearman, "n_used": self.n_used,
                "n_constant": self.n_constant, "n_excluded": self.n_excluded}


def _to_numpy(values: torch.Tensor | np.ndarray, name: str, finite: bool = True) -> np.ndarray:
    array = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    array = np.asarray(array, dtype=np.float64)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2:
        raise InputError(f"{name} must have shape (n_units,) or (n_units, n_targets), got {array.shape}.")
    if finite and not np.isfinite(array).all():
        raise InputError(f"{name} has NaN or inf entries; mark undefined entries with valid= instead.")
    return array


def _valid(valid: torch.Tensor | np.ndarray | None, shape: tuple[int, int]) -> np.ndarray:
    """``valid`` as a bool array of ``shape``: the same shape (or as many entries), or one flag per row."""
    if valid is None:
        return np.ones(shape, dtype=bool)
    keep = np.asarray(valid.detach().cpu().numpy() if isinstance(valid, torch.Tensor) else valid, dtype=bool)
    if keep.ndim == 1 and keep.shape[0] == shape[0]:
        return np.broadcast_to(keep[:, None], shape)  # e.g. ~failed from leave_one_out(..., on_error="skip")
    if keep.size == shape[0] * shape[1]:
        return keep.reshape(shape)
    raise InputError(f"valid has shape {keep.shape}; it must match predicted and actual {shape} or have one entry "
                     f"per row ({shape[0]},), e.g. valid=~failed from leave_one_out(..., on_error='skip').")


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x - x.mean(), y - y.mean()
    scale = np.sqrt((x @ x) * (y @ y))
    return float(x @ y / scale)


def _is_constant(values: np.ndarray) -> bool:
    return bool(np.ptp(values) <= 1e-12 * max(np.abs(values).max(), 1e-300))


def correlations(
    predicted: torch.Tensor | np.ndarray,
    actual: torch.Tensor | np.ndarray,
    *,
    valid: torch.Tensor | np.ndarray | None = None,
    across: str = "units",
) -> Correlations:
    """Mean Pearson and Spearman correlation between predicted and actual changes.

    Args:
        predicted: ``(n_units,)`` or ``(n_units, n_targets)`` predicted changes (e.g. :func:`vif.influence`).
        actual: same shape, actual changes (e.g. :func:`vif.leave_one_out`).
        valid: optional boolean array of the same shape, or one flag per row ``(n_units,)`` (e.g. ``~failed`` from
            :func:`vif.leave_one_out` with ``on_error="skip"``); ``False`` entries are excluded and may be NaN.
        across: ``"units"`` (one correlation per target, across units: the paper's metric) or
            ``"targets"`` (one per unit, across targets).

    Returns:
        :class:`Correlations`.

    Raises:
        InputError: mismatched shapes, non-finite entries where ``valid`` is ``True``, or an unknown ``across``.
    """
    x, y = _to_numpy(predicted, "predicted", finite=False), _to_numpy(actual, "actual", finite=False)
    if x.shape != y.shape:
        raise InputError(f"predicted has shape {x.shape} but actual has {y.shape}; they must match.")
    keep = _valid(valid, x.shape)
    for name, values in (("predicted", x), ("actual", y)):
        bad = ~np.isfinite(values) & keep
        if bad.any():
            row = int(np.argwhere(bad)[0][0])
            raise InputError(f"{name} has {int(bad.sum())} NaN or inf entries outside valid= (first in row {row}); "
                             "mark undefined entries with valid= (e.g. valid=~failed for leave_one_out's skipped "
                             "refits).")
    if across == "targets":
        x, y, keep = x.T, y.T, keep.T
    elif across != "units":
        raise InputError(f"across must be 'units' or 'targets', got {across!r}.")
    pearson_each = np.full(x.shape[1], np.nan)
    spearman_each = np.full(x.shape[1], np.nan)
    for column in range(x.shape[1]):
        rows = keep[:, column]
        a, b = x[rows, column], y[rows, column]
        if len(a) < 3 or _is_constant(a) or _is_constant(b):
            continue
        pearson_each[column] = _pearson(a, b)
        spearman_each[column] = _pearson(rankdata(a), rankdata(b))
    used = ~np.isnan(pearson_each)
    return Correlations(
        pearson=float(pearson_each[used].mean()) if used.any() else float("nan"),
        spearman=float(spearman_each[used].mean()) if used.any() else float("nan"),
        pearson_each=pearson_each,
        spearman_each=spearman_each,
        n_used=int(used.sum()),
        n_constant=int((~used).sum()),
        n_excluded=int((~keep).sum()),
    )


def lds(
    predicted: torch.Tensor | np.ndarray,
    actual: torch.Tensor | np.ndarray,
    *,
    valid: torch.Tensor | np.ndarray | None = None,
) -> float:
    """Linear datamodeling score (Ilyas et al. 2022; Park et al. 2023): mean Spearman over targets across subsets.

    Args:
        predicted: ``(n_subsets,)`` or ``(n_subsets, n_targets)`` predicted changes for random subsets (e.g.
            :func:`vif.datamodels.linear_datamodel` of single-unit influences, or a group estimate of each
            subset's complement).
        actual: same shape, the changes of exact refits on the subsets (:func:`vif.datamodels.subset_changes`).
        valid: optional boolean mask of the same shape (``False`` entries are excluded).

    Returns:
        The Spearman correlation across subsets, per target, averaged over targets (constant targets left out).
    """
    return correlations(predicted, actual, valid=valid, across="units").spearman


def relative_error(predicted: torch.Tensor, actual: torch.Tensor) -> float:
    """``||predicted - actual||_F / ||actual||_F``: how far the estimates are from the truth in size, not just rank."""
    return float(torch.linalg.norm(predicted - actual) / torch.linalg.norm(actual))


def ndcg(S: torch.Tensor, relevance: torch.Tensor, mask: torch.Tensor | None = None, k: int = 10) -> torch.Tensor:
    """nDCG@k of each query's ranking by scores ``S`` ``(n_queries, n_items)``; masked items are not ranked.

    Args:
        S: scores ``(n_queries, n_items)``.
        relevance: 0/1 (or graded) relevance, same shape.
        mask: ``(n_items,)``, items with ``mask <= 0`` are left out of every ranking; default none.
        k: cut-off.

    Returns:
        ``(n_queries,)``; NaN for a query with no relevant kept item (nDCG undefined there).
    """
    if mask is None:
        mask = torch.ones(S.shape[1], dtype=S.dtype, device=S.device)
    kept = mask > 0
    S_kept = torch.where(kept, S, torch.full_like(S, -torch.inf))
    R = relevance * kept
    k = min(k, int(kept.sum()))
    top = torch.topk(S_kept, k, dim=1).indices
    discounts = 1.0 / torch.log2(torch.arange(2, k + 2, dtype=S.dtype, device=S.device))
    dcg = (torch.gather(R, 1, top) * discounts).sum(dim=1)
    ideal = (torch.sort(R, dim=1, descending=True).values[:, :k] * discounts).sum(dim=1)
    return torch.where(ideal > 0, dcg / torch.where(ideal > 0, ideal, torch.ones_like(ideal)), torch.nan)


def roc_auc(labels: torch.Tensor | np.ndarray, scores: torch.Tensor | np.ndarray) -> float:
    """ROC AUC of ``scores`` for boolean ``labels`` (same shape, flattened): P(score of a positive > a negative).

    Args:
        labels: the first argument: bool or 0/1 (which estimates are wrong, which removals change basin).
        scores: the second argument: any finite numbers (the risk, the indicator).

    Ties count one half (average ranks). Returns ``nan`` when every label is the same (the AUC is undefined),
    e.g. an indicator validated on a run in which no removal changed basin.

    Raises:
        InputError: labels other than 0/1 or bool (e.g. scores passed first), non-finite values, or sizes that
            differ.
    """
    raw = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    values = _to_numpy(raw, "labels (the first argument)").reshape(-1)
    if raw.dtype != bool and not np.isin(values, (0.0, 1.0)).all():
        seen = np.unique(values)
        raise InputError(f"labels (the first argument) must be bool or 0/1, got {raw.dtype} values such as "
                         f"{seen[:4].tolist()} ({len(seen)} distinct). Call roc_auc(labels, scores): were the "
                         "scores passed first?")
    y = values.astype(bool)
    s = _to_numpy(scores, "scores (the second argument)").reshape(-1)
    if y.shape != s.shape:
        raise InputError(f"labels and scores must have the same number of entries, got {y.size} and {s.size}.")
    positives, negatives = int(y.sum()), int((~y).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    ranks = rankdata(s)
    return float((ranks[y].sum() - positives * (positives + 1) / 2) / (positives * negatives))
