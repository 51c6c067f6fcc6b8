"""Blends of embedding *directions* on the unit sphere: slerp for two inputs, a weighted Karcher mean for more.

Conventions

* Inputs are ``(d,)`` vectors or ``(B, d)`` rows (``(d,)`` and ``(1, d)`` broadcast against ``(B, d)``). Only
  directions are blended: every input is L2-normalised first, so raw vectors of different norms (a raw image
  embedding next to an audio head output) are never mixed. The result is a batch of unit rows ``(B, d)``;
  rescale it to the decoder's embedding norm with :func:`gen_align.pipelines.calibration.rescale`.
* Weights are validated (real, finite, non-negative, one per input, not all zero) and normalised to sum 1.
  Inputs with weight 0 are dropped before blending.
* Arithmetic is float64; results are float32 (float64 inputs stay float64).

Modes

* ``"slerp"``: two inputs ``a, b`` with weights ``(1 - t, t)`` give ``slerp(a, b, t)`` =
  ``sin((1-t)θ)/sin θ · a + sin(tθ)/sin θ · b``, evaluated in the stable form ``cos(tθ) a + sin(tθ) v`` with ``v``
  the unit tangent at ``a`` towards ``b`` and ``θ = atan2(|b - (a·b)a|, a·b)``. Three or more inputs give the
  weighted Karcher (Fréchet) mean, the minimiser of ``½ Σ w_i d(x, x_i)²`` on the sphere (for two inputs it is
  exactly the slerp above).
* ``"lerp"``: the normalised linear blend ``Σ w_i u_i / |Σ w_i u_i|`` of the unit directions ``u_i``.

Karcher mean iteration (documented convergence): start from the normalised weighted Euclidean mean of the
directions (if that cancels to below 1e-6, from the input with the largest weight, the first on ties); repeat
``x ← exp_x(s · δ)`` where ``δ`` is the Riemannian Newton step for ``f(x) = ½ Σ w_i d(x, x_i)²`` (a ``K × K``
solve, see ``_newton_direction``), or the gradient step ``g = Σ w_i log_x(x_i)`` where the Newton step is not a
descent direction, and the step ``s = 1`` is halved while ``f`` would increase (at most 30 halvings), so ``f``
never increases. It stops when ``|g| < tol`` (default 1e-10 rad: the first-order condition
``Σ w_i log_x(x_i) = 0``) or after ``max_iter`` (default 100) iterations. When the inputs lie in an open
hemisphere the mean is unique (Buss & Fillmore 2001) and Newton converges quadratically near it: measured,
2–4 iterations for 4 inputs in 1024-d with pairwise angles from 23° to 92°, and at most 9 (median 4) for 300
random sets of 3–7 points spread over the whole 2-sphere. Inputs spread beyond a hemisphere may have no unique
mean; the iteration then returns the stationary point reached from the deterministic start, with a
``RuntimeWarning`` if ``|g|`` did not fall below ``tol``.

Antipodal inputs (``b = -a``, and a Karcher iterate antipodal to an input) have no unique geodesic. The choice
is deterministic: the great circle through ``p``, where ``p`` is the coordinate axis ``e_k`` on which ``|a_k|``
is smallest (the lowest such ``k``), made orthogonal to ``a`` (Gram–Schmidt) and normalised. It depends on
``a`` only, so the same inputs always give the same result. Inputs within 1e-7 (in ``|b - (a·b)a|``) of
antipodal count as antipodal. In ``"lerp"`` mode directions that cancel (``|Σ w_i u_i| < 1e-6``) raise an
:class:`~gen_align.errors.EmbeddingError`, since a normalised zero vector has no direction.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Mapping

import numpy as np
import torch

from gen_align.checks import choice, integer
from gen_align.errors import ConfigError, EmbeddingError

MODES = ("slerp", "lerp")
ANTIPODAL_TOL = 1e-7  # |b - (a·b) a| below this: a and b are (anti)parallel
CANCEL_TOL = 1e-6  # |Σ w_i u_i| below this: the directions cancel
KARCHER_TOL = 1e-10
KARCHER_MAX_ITER = 100
_MAX_HALVINGS = 30
OBJECTIVE_SLACK = 1e-12  # increases of the objective below this are float64 round-off, not overshoot


# ------------------------------------------------------------------------------------------------ validation
def validate_weights(weights: Mapping[str, object] | None, names: list[str]) -> dict[str, float]:
    """One non-negative finite weight per name (``None``: equal weights), normalised to sum 1."""
    if not names:
        raise ConfigError("nothing to blend: give at least one embedding.")
    if weights is None:
        return {name: 1.0 / len(names) for name in names}
    if not isinstance(weights, Mapping):
        raise ConfigError(f"weights must be a dict {{name: weight}}, got {type(weights).__name__}.")
    unknown = sorted(set(weights) - set(names))
    missing = [n for n in names if n not in weights]
    if unknown or missing:
        raise ConfigError(
            f"weights must name exactly the inputs {names}; "
            + (f"unknown: {unknown}. " if unknown else "")
            + (f"missing: {missing}. " if missing else "")
            + "Give every input a weight (0 drops it)."
        )
    values = {}
    for name in names:
        value = weights[name]
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
            raise ConfigError(f"weight of {name!r} must be a finite number >= 0, got {value!r}.")
        values[name] = float(value)
    total = sum(values.values())
    if total <= 0:
        raise ConfigError(f"all weights are zero ({values}); give at least one input a positive weight.")
    return {name: v / total for name, v in values.items()}


def _as_rows(z: object, name: str) -> torch.Tensor:
    if isinstance(z, np.ndarray):
        z = torch.from_numpy(z)
    if not isinstance(z, torch.Tensor) or not z.is_floating_point() or z.ndim not in (1, 2) or z.shape[-1] == 0:
        shape = tuple(z.shape) if isinstance(z, (torch.Tensor, np.ndarray)) else type(z).__name__
        raise EmbeddingError(f"{name}: expected a float tensor of shape (d,) or (B, d), got {shape}.")
    z = z.detach().to("cpu", torch.float64).reshape(-1, z.shape[-1])
    norms = z.norm(dim=-1)
    if not bool(torch.isfinite(z).all()):
        raise EmbeddingError(f"{name} contains NaN/inf values; check the encoder output (try float32).")
    if bool((norms == 0).any()):
        raise EmbeddingError(f"{name} has an all-zero row, which has no direction; check the encoder input.")
    return z / norms.unsqueeze(-1)


def _unit_inputs(embeds: Mapping[str, object]) -> tuple[dict[str, torch.Tensor], torch.dtype]:
    if not isinstance(embeds, Mapping) or not embeds:
        raise EmbeddingError("blend takes a non-empty dict {name: (d,) or (B, d) tensor}, e.g. {'text': z_t}.")
    rows = {str(k): _as_rows(v, f"embeds[{k!r}]") for k, v in embeds.items()}
    dims = {k: v.shape[-1] for k, v in rows.items()}
    if len(set(dims.values())) > 1:
        raise EmbeddingError(f"all embeddings must have one dimension d to be blended, got {dims}.")
    sizes = {v.shape[0] for v in rows.values()} - {1}
    if len(sizes) > 1:
        batches = {k: v.shape[0] for k, v in rows.items()}
        raise EmbeddingError(f"batch sizes must match (or be 1), got {batches}.")
    batch = sizes.pop() if sizes else 1
    double = any(str(getattr(v, "dtype", "")) in ("torch.float64", "float64") for v in embeds.values())
    return {k: v.expand(batch, -1) for k, v in rows.items()}, torch.float64 if double else torch.float32


# ---------------------------------------------------------------------------------------- sphere geometry
def orthogonal_direction(a: torch.Tensor) -> torch.Tensor:
    """The deterministic unit vector orthogonal to each unit row of ``a`` used for antipodal inputs."""
    k = a.abs().argmin(dim=-1, keepdim=True)  # first index of the smallest |a_k|
    e = torch.zeros_like(a).scatter_(-1, k, 1.0)
    p = e - (a * e).sum(-1, keepdim=True) * a
    return p / p.norm(dim=-1, keepdim=True)


def _angle_and_tangent(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``θ (N, 1)`` and unit tangent ``v (N, d)`` at ``a`` towards ``b`` (``v = 0`` where ``b = a``)."""
    dot = (a * b).sum(-1, keepdim=True).clamp(-1.0, 1.0)
    perp = b - dot * a
    perp_norm = perp.norm(dim=-1, keepdim=True)
    theta = torch.atan2(perp_norm, dot)
    aligned = perp_norm < ANTIPODAL_TOL
    v = torch.where(aligned, torch.zeros_like(perp), perp / perp_norm.clamp_min(ANTIPODAL_TOL))
    antipodal = aligned & (dot < 0)
    if bool(antipodal.any()):
        v = torch.where(antipodal, orthogonal_direction(a), v)
        theta = torch.where(antipodal, torch.full_like(theta, math.pi), theta)
    return theta, v


def log_map(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Tangent vector at unit ``x`` pointing along the geodesic to unit ``y``, of length ``d(x, y)``."""
    theta, v = _angle_and_tangent(x, y)
    return theta * v


def exp_map(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """The point reached from unit ``x`` along tangent ``g`` after arc length ``|g|`` (renormalised)."""
    n = g.norm(dim=-1, keepdim=True)
    direction = g / n.clamp_min(1e-300)
    out = torch.cos(n) * x + torch.sin(n) * direction
    return out / out.norm(dim=-1, keepdim=True)


def slerp(a: torch.Tensor, b: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
    """Spherical interpolation of unit rows ``a``, ``b`` (``(N, d)`` float64) at ``t`` (scalar or ``(N, 1)``)."""
    theta, v = _angle_and_tangent(a, b)
    return torch.cos(t * theta) * a + torch.sin(t * theta) * v


def _objective(x: torch.Tensor, points: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    dots = (points * x.unsqueeze(0)).sum(-1).clamp(-1.0, 1.0)  # (K, N)
    return 0.5 * (w.unsqueeze(-1) * torch.arccos(dots) ** 2).sum(0)


def _newton_direction(x: torch.Tensor, points: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(g, s)``: ``g = Σ w_i log_x(x_i)`` and the Newton step ``s = H⁻¹ g`` (``g`` where that is no descent).

    On the sphere the Hessian of ``½ d(x, p)²`` is ``v vᵀ + θ cot θ (P - v vᵀ)`` (``v`` the unit log direction,
    ``P`` the tangent projector). ``g`` lies in the span of the ``v_i``, so ``H s = g`` reduces to the ``K × K``
    system ``(diag(w (1 - c)) G + Σ w_i c_i I) α = w θ`` with ``c_i = θ_i cot θ_i``, ``G = VᵀV``, ``s = V α``."""
    theta, v = zip(*(_angle_and_tangent(x, p) for p in points), strict=True)
    theta = torch.stack(theta).squeeze(-1).T  # (N, K)
    v = torch.stack(v, dim=1)  # (N, K, d)
    g = torch.einsum("k,nk,nkd->nd", w, theta, v)
    small = theta < 1e-6
    c = torch.where(small, torch.ones_like(theta), theta / torch.tan(torch.where(small, torch.ones_like(theta), theta)))
    gram = v @ v.transpose(1, 2)
    eye = torch.eye(len(w), dtype=x.dtype).expand_as(gram)
    system = (w * (1 - c)).unsqueeze(-1) * gram + (w * c).sum(-1).view(-1, 1, 1) * eye
    alpha = torch.linalg.lstsq(system, (w * theta).unsqueeze(-1)).solution.squeeze(-1)
    s = torch.einsum("nk,nkd->nd", alpha, v)
    descent = torch.isfinite(s).all(-1, keepdim=True) & ((s * g).sum(-1, keepdim=True) > 0)
    return g, torch.where(descent, s, g)


def karcher_mean(
    points: torch.Tensor, weights: torch.Tensor, *, tol: float = KARCHER_TOL, max_iter: int = KARCHER_MAX_ITER
) -> torch.Tensor:
    """Weighted Karcher mean of unit rows ``points (K, N, d)`` with ``weights (K,)`` (sum 1) → ``(N, d)``.

    See the module docstring for the iteration, its stopping rule and convergence."""
    w = weights.to(points.dtype)
    x = (w.view(-1, 1, 1) * points).sum(0)
    norm = x.norm(dim=-1, keepdim=True)
    fallback = points[int(torch.argmax(w))]  # argmax: first index on ties
    x = torch.where(norm < CANCEL_TOL, fallback, x / norm.clamp_min(CANCEL_TOL))
    gradient_norm = torch.full((x.shape[0],), math.inf, dtype=x.dtype)
    for _ in range(max_iter):
        g, direction = _newton_direction(x, points, w)
        gradient_norm = g.norm(dim=-1)
        active = (gradient_norm >= tol).unsqueeze(-1)
        if not bool(active.any()):
            return x
        f0 = _objective(x, points, w)
        step = torch.ones_like(gradient_norm).unsqueeze(-1)
        for _ in range(_MAX_HALVINGS):
            candidate = exp_map(x, step * direction)
            worse = (_objective(candidate, points, w) > f0 + OBJECTIVE_SLACK).unsqueeze(-1) & active
            if not bool(worse.any()):
                break
            step = torch.where(worse, step / 2, step)
        x = torch.where(active, candidate, x)
    if bool((gradient_norm >= tol).any()):
        warnings.warn(
            f"Karcher mean did not converge in {max_iter} iterations (|gradient| = {float(gradient_norm.max()):.2e} "
            "rad); the inputs are probably spread over more than a hemisphere, where the mean is not unique.",
            RuntimeWarning,
            stacklevel=3,
        )
    return x


# -------------------------------------------------------------------------------------------- public API
def blend(
    embeds: Mapping[str, torch.Tensor], weights: Mapping[str, float] | None = None, mode: str = "slerp"
) -> torch.Tensor:
    """Blend of the inputs' directions → unit rows ``(B, d)`` (see the module docstring for the maths).

    ``blend({"text": z_t, "audio": z_a}, {"text": 0.3, "audio": 0.7})`` is ``slerp(u_t, u_a, 0.7)``."""
    choice(mode, "blend mode", MODES)
    units, dtype = _unit_inputs(embeds)
    w = validate_weights(weights, list(units))
    names = [n for n in units if w[n] > 0]
    if len(names) == 1:
        out = units[names[0]]
    elif mode == "lerp":
        out = _normalised_sum([units[n] for n in names], torch.tensor([w[n] for n in names], dtype=torch.float64))
    elif len(names) == 2:
        a, b = names
        out = slerp(units[a], units[b], w[b] / (w[a] + w[b]))
    else:
        points = torch.stack([units[n] for n in names])
        out = karcher_mean(points, torch.tensor([w[n] for n in names], dtype=torch.float64))
    return out.to(dtype)


def _normalised_sum(rows: list[torch.Tensor], w: torch.Tensor) -> torch.Tensor:
    total = sum(wi * r for wi, r in zip(w, rows, strict=True))
    norm = total.norm(dim=-1, keepdim=True)
    if bool((norm < CANCEL_TOL).any()):
        raise EmbeddingError(
            "the weighted directions cancel out (e.g. opposite embeddings with equal weights), so lerp has no "
            "direction; use mode='slerp' (it handles opposite inputs) or change the weights."
        )
    return total / norm


def interpolate(a: torch.Tensor, b: torch.Tensor, steps: int, mode: str = "slerp") -> torch.Tensor:
    """``steps`` unit embeddings ``(steps, d)`` along the arc from ``a`` to ``b``, endpoints included
    (``t = 0, 1/(steps-1), …, 1``); ``mode="lerp"`` gives the normalised straight-line blends instead."""
    choice(mode, "interpolation mode", MODES)
    steps = integer(steps, "interpolation steps", low=2, hint="(the two endpoints are always included)")
    units, dtype = _unit_inputs({"a": a, "b": b})
    if units["a"].shape[0] != 1:
        raise EmbeddingError(f"interpolate takes two single embeddings ((d,) or (1, d)), got {tuple(a.shape)}.")
    ua, ub = units["a"], units["b"]
    t = torch.linspace(0.0, 1.0, steps, dtype=torch.float64).view(-1, 1)
    if mode == "slerp":
        out = slerp(ua.expand(steps, -1), ub.expand(steps, -1), t)
    else:
        out = torch.cat([_normalised_sum([ua, ub], torch.stack([1 - ti, ti]).flatten()) for ti in t])
    out[0], out[-1] = ua[0], ub[0]  # exact endpoints
    return out.to(dtype)
