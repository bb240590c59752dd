"""Closed-form masked-gradient differences of the Cox objective over event-time groups (the VIF fast path).

The engine needs ``D[r] = grad L(beta, m_r) - grad L(beta, 1)`` for a block of masks ``m_r`` (for VIF,
``m_r = 1 - eps r`` for a unit or a group). Autodiff evaluates the whole objective once per mask; here only
what a mask changes is recomputed. With sorted positions ``j``, event groups ``h = 0 .. E-1`` (distinct event
times, ascending), ``q_j`` the last event group with time ``<= t_j`` (``-1``: at risk for none), ``e_j =
exp(eta_j)``, risk sums ``S_h = sum_{q_j >= h} w_j e_j``, ``S1_h = sum_{q_j >= h} w_j e_j x_j`` and, over the
events of group ``h``, ``W_h = sum w_j``, ``m_h`` = number with ``w_j > 0``, ``D_h = sum w_j e_j``,
``D1_h = sum w_j e_j x_j``, the gradient of the summed negative partial log-likelihood is::

    g(w) = -sum_j w_j d_j x_j + sum_h (a_h S1_h - b_h D1_h)
    Breslow: a_h = W_h / S_h,  b_h = 0
    Efron:   a_h = (W_h / m_h) sum_{s<m_h} 1 / (S_h - (s/m_h) D_h),
             b_h = (W_h / m_h) sum_{s<m_h} (s/m_h) / (S_h - (s/m_h) D_h)

For a mask ``w' = 1 + delta`` (``delta`` nonzero on few units ``u``), with primes for the masked sums::

    g(w') - g(1) = (a' - a) @ S1 - (b' - b) @ D1 + sum_u delta_u [-d_u + e_u (A'_{q_u} - d_u b'_{q_u})] x_u

where ``A'_h = sum_{h' <= h} a'_{h'}``. The cost per mask is ``O(E)`` for Breslow and ``O(number of events)``
for Efron (the tie slots), plus one ``(k, E) @ (E, p)`` product per block, instead of an ``O(n p)`` autodiff
pass with its gathers and scatters. Any mask values are handled exactly (values above 1, in ``(0, 1)``, 0);
an emptied risk set contributes zero, as in the objective.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import MaskError

__all__ = ["CoxGradients"]

#: Efron: a change ``t`` of a risk-set sum up to this fraction of the group's smallest slot denominator uses
#: the power series (``TERMS`` terms: truncation below ``SERIES_RATIO ** TERMS = 1e-18`` relative)
SERIES_RATIO = 0.1
TERMS = 18


@dataclass(frozen=True)
class _Groups:
    """Event-group bookkeeping of sorted data (independent of ``beta``)."""

    q: torch.Tensor  # (n,) last event group at risk for each sorted position, -1 for none
    event_group: torch.Tensor  # (n_events,) event group of each event, in sorted order
    event_position: torch.Tensor  # (n_events,) sorted position of each event
    slot: torch.Tensor  # (n_events,) rank of the event inside its group (0 .. m_h - 1)
    count: torch.Tensor  # (E,) events per group at the full mask
    events_before: torch.Tensor  # (E + 1,) events in groups before each group (last entry: all events)
    n_groups: int


def _groups(group: torch.Tensor, event: torch.Tensor) -> _Groups:
    is_event = event > 0
    n_time_groups = int(group.max()) + 1 if group.numel() else 0
    has_event = torch.zeros(n_time_groups, dtype=torch.bool, device=group.device)
    has_event[group[is_event]] = True
    event_groups_upto = torch.cumsum(has_event.long(), 0) - 1  # per time group: last event group <= it
    q = event_groups_upto[group]
    event_position = torch.nonzero(is_event).reshape(-1)
    event_group = q[event_position]
    n_groups = int(has_event.sum())
    count = torch.zeros(n_groups, dtype=torch.long, device=group.device).index_add_(
        0, event_group, torch.ones_like(event_group))
    first = torch.cumsum(count, 0) - count
    slot = torch.arange(event_position.numel(), device=group.device) - first[event_group]
    events_before = torch.cat([first, count.sum().reshape(1)])
    return _Groups(q=q, event_group=event_group, event_position=event_position, slot=slot, count=count,
                   events_before=events_before, n_groups=n_groups)


class CoxGradients:
    """``grad L(beta, w') - grad L(beta, 1)`` for blocks of masks, in closed form (module notes).

    Args:
        x: sorted covariates ``(n, p)``; event: sorted 0/1 events ``(n,)``; group: sorted tie-group ids ``(n,)``;
        order: ``order[k]`` is the input row of sorted position ``k``; ties: ``"breslow"`` or ``"efron"``.
    """

    def __init__(self, x: torch.Tensor, event: torch.Tensor, group: torch.Tensor, order: torch.Tensor,
                 ties: str) -> None:
        self.x, self.event, self.ties = x, event, ties
        self.groups = _groups(group, event)
        self.position = torch.empty_like(order)
        self.position[order] = torch.arange(order.numel(), device=order.device)  # input row -> sorted position
        self._cache: tuple[bytes, dict] | None = None

    def _at(self, beta: torch.Tensor) -> dict[str, torch.Tensor]:
        """Full-mask sums at ``beta`` (cached for the last ``beta``)."""
        key = beta.detach().cpu().numpy().tobytes()
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        g, x = self.groups, self.x
        eta = x @ beta.detach()
        e = torch.exp(eta - eta.max())
        E = g.n_groups
        at_risk = g.q >= 0
        by_group = x.new_zeros(E, 1 + x.shape[1]).index_add_(0, g.q[at_risk], (e[:, None] * torch.cat(
            [torch.ones_like(x[:, :1]), x], 1))[at_risk])
        suffix = torch.flip(torch.cumsum(torch.flip(by_group, (0,)), 0), (0,))  # sums over risk sets
        S, S1 = suffix[:, 0].contiguous(), suffix[:, 1:].contiguous()
        event_e = e[g.event_position]
        D = x.new_zeros(E).index_add_(0, g.event_group, event_e)
        D1 = x.new_zeros(E, x.shape[1]).index_add_(0, g.event_group, event_e[:, None] * x[g.event_position])
        W = g.count.to(x.dtype)
        sums = {"e": e, "S": S, "S1": S1, "D": D, "D1": D1, "W": W, "m": g.count.to(x.dtype)}
        a, b = self._coefficients(S[None], D[None], W[None], sums["m"][None])
        sums["a"], sums["b"] = a[0], None if b is None else b[0]
        sums["cumulative_a"] = torch.cumsum(sums["a"], 0)
        if self.ties == "efron":  # per event slot at the full mask: 1 / (S_h - (s/m_h) D_h) and s/m_h
            fraction = g.slot.to(x.dtype) / W[g.event_group]
            sums.update(self._efron_moments(S[g.event_group] - fraction * D[g.event_group], fraction, W))
        self._cache = (key, sums)
        return sums

    def _coefficients(self, S: torch.Tensor, D: torch.Tensor, W: torch.Tensor, m: torch.Tensor,
                      slots: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(a, b)`` of shape ``(k, H)`` from masked group sums ``(k, H)`` (module notes).

        Zero where no event is left (an emptied risk set contributes nothing, as in the objective). Efron sums
        over each group's own slots, or, with ``slots``, over ``0 .. slots-1`` for every entry (``m <= slots``).
        """
        if self.ties == "breslow":
            return (W / S).masked_fill_(W == 0, 0.0), None
        present = (W != 0) & (m > 0)
        if slots is None:
            g = self.groups
            n_events = int(g.events_before[S.shape[1]])
            group, slot = g.event_group[:n_events], g.slot[:n_events].to(S.dtype)
            S_slot, D_slot, m_slot, valid_group = S[:, group], D[:, group], m[:, group], present[:, group]
        else:
            slot = torch.arange(slots, dtype=S.dtype, device=S.device)
            S_slot, D_slot, m_slot, valid_group = S[..., None], D[..., None], m[..., None], present[..., None]
        fraction = slot / m_slot.clamp(min=1.0)
        term = (S_slot - fraction * D_slot).reciprocal_()
        term.masked_fill_((slot >= m_slot) | ~valid_group, 0.0)
        scale = (W / m.clamp(min=1.0)).masked_fill_(~present, 0.0)
        if slots is not None:
            return term.sum(-1) * scale, (term * fraction).sum(-1) * scale
        a = torch.zeros_like(S).index_add_(1, group, term) * scale
        b = torch.zeros_like(S).index_add_(1, group, term * fraction) * scale
        return a, b

    def differences(self, beta: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """``(k, p)``: ``grad L(beta, masks[r]) - grad L(beta, 1)``; ``masks`` ``(k, n)`` in input row order."""
        n = self.x.shape[0]
        if masks.ndim != 2 or masks.shape[1] != n or not masks.is_floating_point():
            raise MaskError(f"masks must be a float tensor of shape (k, {n}), got {tuple(masks.shape)} {masks.dtype}.")
        rows, columns = torch.nonzero(masks != 1, as_tuple=True)
        return self.changes(beta, rows, columns, masks[rows, columns], masks.shape[0])

    def changes(self, beta: torch.Tensor, rows: torch.Tensor, columns: torch.Tensor, values: torch.Tensor,
                k: int) -> torch.Tensor:
        """:meth:`differences` for ``k`` masks that equal 1 except ``mask[rows[j]][columns[j]] = values[j]``.

        The same numbers without a dense ``(k, n)`` mask: ``O(k E + changes)`` work for Breslow. Each
        ``(row, column)`` pair must appear at most once.
        """
        sums, g = self._at(beta), self.groups
        delta = values.to(self.x.dtype) - 1.0
        u = self.position[columns]  # sorted positions of the changed entries
        q = g.q[u]
        H = int(q.max()) + 1 if q.numel() else 0  # event groups a change reaches: later ones are unchanged
        at_risk = q >= 0
        d, e = self.event[u], sums["e"][u]
        rows_r, q_r = rows[at_risk], q[at_risk]
        changes = torch.stack([delta * e, delta * d, delta * e * d, ((values <= 0) & (d > 0)).to(delta)], 1)
        per_group = self.x.new_zeros(k * H, 4).index_add_(0, rows_r * H + q_r, changes[at_risk]).reshape(k, H, 4)
        dS = torch.flip(torch.cumsum(torch.flip(per_group[:, :, 0], (1,)), 1), (1,))
        da, db = (self._breslow_change if self.ties == "breslow" else self._efron_change)(sums, dS, per_group)
        result = da @ sums["S1"][:H]
        unit = -d
        unit[at_risk] += e[at_risk] * (sums["cumulative_a"][q_r] + torch.cumsum(da, 1)[rows_r, q_r])
        if db is not None:
            result -= db @ sums["D1"][:H]
            unit[at_risk] -= (e * d)[at_risk] * (sums["b"][q_r] + db[rows_r, q_r])
        return result.index_add_(0, rows, (delta * unit)[:, None] * self.x[u])

    @staticmethod
    def _breslow_change(sums: dict, dS: torch.Tensor, per_group: torch.Tensor) -> tuple[torch.Tensor, None]:
        """``a' - a`` ``(k, H)`` for Breslow, as ``(dW S - W dS) / (S S')`` (no cancellation); ``-a`` where emptied."""
        H = dS.shape[1]
        S, W, a, dW = sums["S"][:H], sums["W"][:H], sums["a"][:H], per_group[:, :, 1]
        change = (dW * S - W * dS) / (S * (S + dS))
        return torch.where(W + dW == 0, -a.expand_as(change), change), None

    def _efron_moments(self, denominator: torch.Tensor, fraction: torch.Tensor, W: torch.Tensor) -> dict:
        """Per event group: ``P[k, h] = sum_s c_s^-(k+2)`` and ``Pb[k, h] = sum_s f_s c_s^-(k+2)`` (``k < TERMS``).

        ``c_s = S_h - f_s D_h`` are the group's slot denominators at the full mask, ``f_s = s / m_h``.
        Then ``sum_s [1/(c_s + t) - 1/c_s] = sum_{k>=1} (-t)^k P[k-1, h]`` for ``|t| < min_s c_s``.
        """
        group, E = self.groups.event_group, self.groups.n_groups
        inverse = denominator.reciprocal()
        powers = inverse[:, None] ** torch.arange(2, TERMS + 2, dtype=inverse.dtype, device=inverse.device)  # (n_ev, K)
        moments = inverse.new_zeros(E, TERMS).index_add_(0, group, powers)
        weighted = inverse.new_zeros(E, TERMS).index_add_(0, group, fraction[:, None] * powers)
        smallest = inverse.new_full((E,), float("inf")).scatter_reduce_(0, group, denominator, "amin")
        return {"moments": moments.T.contiguous(), "weighted_moments": weighted.T.contiguous(), "smallest": smallest,
                "scale": W / W.clamp(min=1.0)}

    def _efron_change(self, sums: dict, dS: torch.Tensor, per_group: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(a' - a, b' - b)`` ``(k, H)`` for Efron.

        Where only ``S`` changes, by ``t = dS`` with ``|t| <= SERIES_RATIO`` times the group's smallest slot
        denominator, the exact power series of :meth:`_efron_moments` truncated after ``TERMS`` terms (error
        below ``SERIES_RATIO ** TERMS`` relative); everywhere else (a group whose events change, or a risk set
        the change nearly empties) the group's slots are summed exactly.
        """
        H = dS.shape[1]
        minus_t = -dS
        series = [sums[name][TERMS - 1, :H].expand_as(dS).clone() for name in ("moments", "weighted_moments")]
        for k in range(TERMS - 2, -1, -1):  # Horner in -t
            for accumulated, name in zip(series, ("moments", "weighted_moments")):
                accumulated.mul_(minus_t).add_(sums[name][k, :H])
        da, db = (accumulated.mul_(minus_t).mul_(sums["scale"][:H]) for accumulated in series)
        exact = (dS.abs() > SERIES_RATIO * sums["smallest"][:H]) | per_group[:, :, 1:].ne(0).any(2)
        rows, groups = torch.nonzero(exact, as_tuple=True)
        if rows.numel():
            sub = per_group[rows, groups]
            a, b = self._coefficients((sums["S"][groups] + dS[rows, groups])[None], (sums["D"][groups] + sub[:, 2])[None],
                                      (sums["W"][groups] + sub[:, 1])[None], (sums["m"][groups] - sub[:, 3])[None],
                                      slots=int(sums["m"][groups].max()))
            da[rows, groups] = a[0] - sums["a"][groups]
            db[rows, groups] = b[0] - sums["b"][groups]
        return da, db
