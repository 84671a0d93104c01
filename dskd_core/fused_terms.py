"""Loss terms over one block of head logits, with a hand-written gradient for CE and forward KL (`fused.py`).

A method that sums cross-entropies and divergences over LM heads writes its per-block loss once, against
`Terms`, instead of as an autograd function of the logits:

    def block(t: Terms, y: Tensor) -> None:
        t.ce(0, head=0, target=y)                       # sums[0] += Σ_rows CE(z_0, y)
        t.divergence(1, q=0, p=1, mask=t.argmax(1) == y)  # sums[1] += Σ_mask D(softmax(z_1/τ) ‖ softmax(z_0/τ))
        t.count(2, t.argmax(0) == y)                     # sums[2] += Σ_rows (a metric, no gradient)

    fused_sum(TermsBlock(block, n_sums=3, divergence="fkl", temperature=2.0), heads, y, weights=…, …)

`TermsBlock` evaluates it one of two ways, with the same value and gradient (to fp32 rounding):
- forward KL (the default divergence): `_AnalyticTerms`. Each head's softmax at each temperature a term reads is
  computed once per block and shared by the terms (DSKD's student logits feed its CE at τ = 1 and the
  student-space KL at τ; the projected teacher feeds its CE and the KL's target), and the gradient is written
  from the closed forms, ∂CE/∂z = softmax(z) − onehot(y) and ∂KL(p‖q)/∂z_q = (q − p)/τ, with no autograd graph,
  no log-probability tensors and no `log_softmax` backward (slow on CPU);
- any other divergence: `_AutogradTerms`, the terms as autograd functions (`F.cross_entropy`, `losses.divergence`)
  differentiated one block at a time, as `fused.AutogradBlock` does.

Conventions both follow: a divergence's target side (`p`) is a constant (no gradient reaches it through that
term; a CE on the same head still trains it); `mask` rows are summed by `where`, so a non-finite value outside
the mask cannot leak; CE rows whose target is `ignore_index` are skipped. The analytic form needs finite logits,
which the fused path's are (matmuls of finite hidden states and heads).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from dskd_core.fused import AutogradBlock, BlockLoss
from dskd_core.losses import divergence as divergence_fn

IGNORE_INDEX = -100
ANALYTIC_DIVERGENCES = frozenset({"fkl"})


class Terms:
    """The block's logits (`z[i]`, `[b, V_i]` fp32, read-only) and the terms summed into `n_sums` slots."""

    def __init__(
        self, logits: list[Tensor], n_sums: int, name: str, temperature: float, params: dict
    ) -> None:
        self.z = logits
        self.n_sums, self.name, self.temperature, self.params = n_sums, name, temperature, params
        self._slots: list[list[Tensor]] = [[] for _ in range(n_sums)]
        self._top: dict[int, tuple[Tensor, Tensor]] = {}

    def argmax(self, head: int) -> Tensor:
        """Row-wise argmax of head `head`'s logits (the first maximal column, as `Tensor.argmax`)."""
        return self._max(head)[1]

    def _max(self, head: int) -> tuple[Tensor, Tensor]:
        # max(dim) gives argmax's index (the first maximal one) and the value, at a third of argmax's CPU cost.
        if head not in self._top:
            self._top[head] = self.z[head].detach().max(-1)
        return self._top[head]

    def count(self, slot: int, mask: Tensor) -> None:
        """`sums[slot] += mask.sum()` (a metric: no gradient)."""
        self._slots[slot].append(mask.sum(dtype=self.z[0].dtype))

    def _add(self, slot: int, value: Tensor) -> None:
        self._slots[slot].append(value)

    def sums(self) -> Tensor:
        zero = torch.zeros((), dtype=self.z[0].dtype, device=self.z[0].device)
        return torch.stack([sum(v[1:], v[0]) if v else zero for v in self._slots])

    def ce(self, slot: int, *, head: int, target: Tensor, ignore_index: int | None = IGNORE_INDEX) -> None:
        """`sums[slot] += Σ_rows CE(z_head, target)`, rows whose target is `ignore_index` left out (None: every
        target is a column, the caller's promise, which saves the masking)."""
        raise NotImplementedError

    def divergence(self, slot: int, *, q: int, p: int, mask: Tensor | None = None) -> None:
        raise NotImplementedError


class _AutogradTerms(Terms):
    def ce(self, slot: int, *, head: int, target: Tensor, ignore_index: int | None = IGNORE_INDEX) -> None:
        ignore = IGNORE_INDEX if ignore_index is None else ignore_index
        self._add(slot, F.cross_entropy(self.z[head], target, ignore_index=ignore, reduction="sum"))

    def divergence(self, slot: int, *, q: int, p: int, mask: Tensor | None = None) -> None:
        values = divergence_fn(
            self.name, self.z[q], self.z[p].detach(), temperature=self.temperature, **self.params
        )
        if mask is not None:
            values = torch.where(mask, values, 0.0)
        self._add(slot, values.sum())


# A row coefficient: one number for every row, or a `[b]` tensor.
Coef = float | Tensor


class _AnalyticTerms(Terms):
    """Forward KL and CE from shared softmaxes; gradient contributions are collected and written by `write`.

    `weights` are the loss weights as floats (one per slot). Few, whole-block tensor operations: at a small
    vocabulary (the toy world's) each one's fixed cost is what the step pays.
    """

    def __init__(self, logits: list[Tensor], wants: list[bool], weights: list[float], *args) -> None:
        super().__init__(logits, *args)
        self.wants, self.weights = wants, weights
        self._softmax: dict[tuple[int, float], tuple[Tensor, Tensor]] = {}
        # Per head: (row coefficient, tensor [b, V]) products and (row coefficient, column [b]) one-hots.
        self._dense: dict[int, list[tuple[Coef, Tensor]]] = {}
        self._onehot: dict[int, list[tuple[Coef, Tensor]]] = {}

    def _softmax_lse(self, head: int, tau: float) -> tuple[Tensor, Tensor]:
        """softmax(z/τ) `[b, V]` and logsumexp(z/τ) `[b]`, once per head and temperature.

        At the argmax column softmax = exp(z_max/τ − lse) is its largest value (≥ 1/V, never underflows), so
        lse = z_max/τ − log max softmax, exactly. A head whose argmax was asked for reads the max from it;
        another takes two `amax` passes (together cheaper than one `max(dim)` on CPU).
        """
        key = (head, tau)
        if key not in self._softmax:
            z = self.z[head]
            probs = torch.softmax(z if tau == 1.0 else z / tau, -1)
            if head in self._top:
                top_value, top = self._top[head]
                at_top = probs.gather(1, top.unsqueeze(1)).squeeze(1)
            else:
                top_value, at_top = z.amax(-1), probs.amax(-1)
            lse = (top_value if tau == 1.0 else top_value / tau) - at_top.log()
            self._softmax[key] = (probs, lse)
        return self._softmax[key]

    def _grad(self, head: int, coef: Coef, tensor: Tensor) -> None:
        """∂/∂z_head += coef·tensor; a coefficient on a tensor already there (the softmax a CE and a KL at τ = 1
        share) is added to the first one: one pass over the block less."""
        dense = self._dense.setdefault(head, [])
        for k, (other, seen) in enumerate(dense):
            if seen is tensor:
                dense[k] = (other + coef, seen)
                return
        dense.append((coef, tensor))

    def ce(self, slot: int, *, head: int, target: Tensor, ignore_index: int | None = IGNORE_INDEX) -> None:
        probs, lse = self._softmax_lse(head, 1.0)
        if ignore_index is None:
            valid, safe = None, target
        else:
            valid = target != ignore_index
            safe = torch.where(valid, target, 0)
        picked = lse - self.z[head].gather(1, safe.unsqueeze(1)).squeeze(1)
        self._add(slot, (picked if valid is None else torch.where(valid, picked, 0.0)).sum())
        if self.wants[head]:
            weight = self.weights[slot]
            coef: Coef = weight if valid is None else valid * weight
            self._grad(head, coef, probs)
            self._onehot.setdefault(head, []).append((coef, safe))

    def divergence(self, slot: int, *, q: int, p: int, mask: Tensor | None = None) -> None:
        tau = float(self.temperature)
        q_probs, q_lse = self._softmax_lse(q, tau)
        p_probs, p_lse = self._softmax_lse(p, tau)
        # KL(p ‖ q) = Σ p·(log p − log q) = Σ p·(z_p − z_q)/τ − lse_p + lse_q   (Σ p = 1)
        cross = (self.z[p] - self.z[q]).mul_(p_probs).sum(-1)
        values = (cross if tau == 1.0 else cross / tau).sub_(p_lse).add_(q_lse)
        if mask is not None:
            values = torch.where(mask, values, 0.0)
        self._add(slot, values.sum())
        if self.wants[q]:
            weight = self.weights[slot] / tau
            coef: Coef = weight if mask is None else mask * weight
            self._grad(q, coef, q_probs)
            self._grad(q, -coef, p_probs)

    def write(self) -> None:
        """Replace each wanted head's logits by ∂(weights · sums)/∂logits."""
        for head, wanted in enumerate(self.wants):
            if not wanted:
                continue
            z = self.z[head]
            dense = self._dense.get(head, [])
            if not dense:
                z.zero_()
            for k, (coef, tensor) in enumerate(dense):
                c = coef.unsqueeze(1) if isinstance(coef, Tensor) else coef
                if k == 0:
                    torch.mul(tensor, c, out=z)
                elif isinstance(c, Tensor):
                    z.addcmul_(tensor, c)
                else:
                    z.add_(tensor, alpha=c)
            for coef, column in self._onehot.get(head, []):
                index = column.unsqueeze(1)
                if isinstance(coef, Tensor):
                    z.scatter_add_(1, index, coef.neg().unsqueeze(1))
                else:
                    z.scatter_add_(1, index, torch.full(index.shape, -coef, dtype=z.dtype, device=z.device))


class TermsBlock(BlockLoss):
    """A `fused.BlockLoss` from `fn(terms, *extras)` that adds CE / divergence / count terms to `n_sums` slots.

    `divergence` names the one divergence the terms use (`losses.DIVERGENCES`), at `temperature` with `params`;
    forward KL runs the analytic path, any other the autograd one.
    """

    def __init__(
        self,
        fn: Callable[..., None],
        *,
        n_sums: int,
        divergence: str = "fkl",
        temperature: float = 1.0,
        analytic: bool | None = None,
        **params: float,
    ) -> None:
        self.fn, self.n_sums = fn, n_sums
        self.options = (divergence, float(temperature), params)
        self.analytic = divergence in ANALYTIC_DIVERGENCES if analytic is None else analytic
        if self.analytic and divergence not in ANALYTIC_DIVERGENCES:
            raise ValueError(f"no analytic gradient for divergence {divergence!r}")

        def as_function(*tensors: Tensor) -> Tensor:
            logits, extras = list(tensors[: self._n_heads]), tensors[self._n_heads :]
            terms = _AutogradTerms(logits, self.n_sums, *self.options)
            self.fn(terms, *extras)
            return terms.sums()

        self._autograd = AutogradBlock(as_function)
        self._n_heads = 0
        self._weights: tuple[Tensor, list[float]] | None = None

    def __call__(
        self, logits: list[Tensor], extras: list[Tensor], wants: list[bool], weights: Tensor
    ) -> Tensor:
        if not self.analytic:
            self._n_heads = len(logits)
            return self._autograd(logits, extras, wants, weights)
        # The weights as floats, once per fused_sum call (every block of a call gets the same tensor).
        if self._weights is None or self._weights[0] is not weights:
            self._weights = (weights, weights.tolist())
        with torch.no_grad():
            terms = _AnalyticTerms(logits, wants, self._weights[1], self.n_sums, *self.options)
            self.fn(terms, *extras)
            sums = terms.sums()
            terms.write()
        return sums
