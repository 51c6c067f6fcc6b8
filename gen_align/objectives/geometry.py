"""Numerically safe building blocks on the unit sphere shared by the objectives.

- :func:`self_gram` — ``Z Zᵀ`` whose backward is one matmul ``(G + Gᵀ) Z`` instead of autograd's two.
- :func:`safe_sqrt` — exact ``sqrt(max(x, 0))`` with a derivative clipped at ``x = eps`` (finite at 0).
- :func:`squared_arccos` — ``arccos(c)²`` with the analytic derivative ``−2 θ / sin θ`` (finite at c = 1,
  where autograd through ``arccos`` gives ``0 · ∞ = NaN``; clipped just short of the antipode c = −1).
- :func:`unit_gram_determinant` — ``det`` of the Gram matrix of unit vectors as a polynomial in the
  cosines (Leibniz), so the gradient at a singular matrix is the true adjugate (``torch.linalg.det``
  returns a zero gradient there).
"""

from __future__ import annotations

import functools
import itertools
import math
import operator
from collections.abc import Mapping
from functools import cache

import torch

_ANTIPODE_MARGIN = 1e-4  # θ is clipped to π − margin in the derivative of arccos², where it is not differentiable
_LEIBNIZ_MAX_K = 6


class _SelfGram(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        ctx.save_for_backward(z)
        return z @ z.mT

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        (z,) = ctx.saved_tensors
        return (grad + grad.mT).to(z.dtype) @ z


def self_gram(z: torch.Tensor) -> torch.Tensor:
    """``z @ z.T`` with a single-matmul backward ``(G + Gᵀ) z`` (autograd's generic matmul backward takes
    two, and the B×B products are the cost of every uniformity term)."""
    return _SelfGram.apply(z)


class _SafeSqrt(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        ctx.save_for_backward(x)
        return x.clamp_min(0).sqrt()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        (x,) = ctx.saved_tensors
        floor = torch.finfo(x.dtype).eps
        return grad / (2 * x.clamp_min(floor).sqrt())


def safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    """Exact ``sqrt(max(x, 0))``; derivative ``1 / (2 sqrt(max(x, eps)))`` so it stays finite at 0."""
    return _SafeSqrt.apply(x)


class _SquaredArccos(torch.autograd.Function):
    @staticmethod
    def forward(ctx, c: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        theta = torch.arccos(c.clamp(-1.0, 1.0))
        ctx.save_for_backward(theta)
        return theta * theta

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        (theta,) = ctx.saved_tensors
        theta = theta.clamp_max(math.pi - _ANTIPODE_MARGIN)
        # d/dc arccos(c)^2 = -2 θ / sin θ = -2 / sinc(θ/π); sinc(0) = 1 gives the limit -2 at c = 1.
        return grad * (-2.0 / torch.sinc(theta / math.pi))


def squared_arccos(c: torch.Tensor) -> torch.Tensor:
    """Squared geodesic distance ``arccos(c)²`` from cosines, finite in value and gradient on [−1, 1]."""
    return _SquaredArccos.apply(c)


@cache
def _permutations(k: int) -> tuple[list[tuple[int, ...]], list[int]]:
    perms = list(itertools.permutations(range(k)))
    signs = []
    for p in perms:
        inversions = sum(1 for i in range(k) for j in range(i + 1, k) if p[i] > p[j])
        signs.append(-1 if inversions % 2 else 1)
    return perms, signs


def unit_gram_determinant(cosines: Mapping[tuple[int, int], torch.Tensor], k: int) -> torch.Tensor:
    """det of the Gram matrix of k unit vectors from its off-diagonal entries ``cosines[(a, b)]``, a < b
    (tensors of broadcastable shapes, e.g. (B,) per sample or (B_text, B_tuple) per pair).

    For k ≤ 6 it is the Leibniz polynomial with the unit diagonal factored out (k = 3:
    1 + 2 c01 c02 c12 − c01² − c02² − c12²), so the gradient at a singular Gram matrix is the exact
    adjugate; larger k falls back to ``torch.linalg.det`` (LU), whose gradient there is 0.
    """

    def entry(r: int, c: int) -> torch.Tensor:
        return cosines[(min(r, c), max(r, c))]

    if k > _LEIBNIZ_MAX_K:
        shape = torch.broadcast_shapes(*(v.shape for v in cosines.values()))
        some = next(iter(cosines.values()))
        one = torch.ones(shape, dtype=some.dtype, device=some.device)
        rows = [torch.stack([one if r == c else entry(r, c).expand(shape) for c in range(k)], -1) for r in range(k)]
        return torch.linalg.det(torch.stack(rows, dim=-2))
    perms, signs = _permutations(k)
    total = 0.0
    for perm, sign in zip(perms, signs, strict=True):
        factors = [entry(r, perm[r]) for r in range(k) if perm[r] != r]
        term = functools.reduce(operator.mul, factors) if factors else 1.0
        total = total + term if sign > 0 else total - term
    return total
