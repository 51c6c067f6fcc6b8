"""The UniAlign objective (Eq. 13) and its design space (Table 4): uniformity + anchor alignment + L_vol."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from gen_align.checks import choice, flag, non_negative
from gen_align.errors import ConfigError
from gen_align.objectives.alignment import alignment_from_cosines
from gen_align.objectives.uniformity import (
    KERNELS,
    check_kernel,
    check_reduction,
    check_tau,
    uniformity_of_unit,
    weighted_centroids,
)
from gen_align.objectives.volume import paired_cosines, volume_from_cosines
from gen_align.tensors import check_embedding_dict, normalized_weights, unit_dict

ALIGNMENT_METRICS = ("euclidean", "geodesic", "volume")  # Table 4, "Alignment (attraction)"


def design_choice(geometry: str | None, uniformity_kernel: str | None, alignment_metric: str | None) -> tuple[str, str]:
    """(uniformity kernel, alignment metric) of Table 4; ``geometry`` is shorthand that sets both (Euclidean or
    geodesic). Unset choices are Euclidean; a shorthand that contradicts an explicit choice is refused."""
    if geometry is not None:
        check_kernel(geometry, "geometry")
        for name, value in (("uniformity_kernel", uniformity_kernel), ("alignment_metric", alignment_metric)):
            if value is not None and value != geometry:
                raise ConfigError(
                    f"geometry={geometry!r} sets both uniformity_kernel and alignment_metric, but {name}={value!r} "
                    "was given too; pass either geometry or the two explicit choices."
                )
        return geometry, geometry
    kernel = uniformity_kernel or "euclidean"
    metric = alignment_metric or "euclidean"
    choice(kernel, "uniformity_kernel", KERNELS)
    choice(metric, "alignment_metric", ALIGNMENT_METRICS)
    return kernel, metric


def check_unialign_options(
    lambda_uni: float,
    lambda_align: float,
    lambda_vol: float,
    tau: float,
    tau_ctr: float | None,
    uniformity_kernel: str | None,
    alignment_metric: str | None,
    geometry: str | None,
    reduction: str,
    centroid_term: bool = True,
    volume_term: bool = True,
) -> tuple[str, str, float]:
    """Validate UniAlign's scalar options (ConfigError); returns (uniformity kernel, alignment metric, τ_ctr)."""
    kernel, metric = design_choice(geometry, uniformity_kernel, alignment_metric)
    check_reduction(reduction)
    check_tau(tau)
    tau_ctr = tau if tau_ctr is None else tau_ctr
    check_tau(tau_ctr, name="tau_ctr")
    lambdas = {"lambda_uni": lambda_uni, "lambda_align": lambda_align, "lambda_vol": lambda_vol}
    for name, value in lambdas.items():
        non_negative(value, name)
    if not any(lambdas.values()):
        raise ConfigError("lambda_uni, lambda_align and lambda_vol are all 0: the loss would be empty.")
    with_vol = flag(centroid_term, "centroid_term") | flag(volume_term, "volume_term")
    if not (lambda_uni or lambda_align or (lambda_vol and with_vol)):
        raise ConfigError("only lambda_vol is set but centroid_term and volume_term are both off: the loss is empty.")
    return kernel, metric, tau_ctr


def unialign_terms(
    z_dict: Mapping[str, torch.Tensor],
    anchor: str = "image",
    lambda_uni: float = 1.0,
    lambda_align: float = 1.0,
    lambda_vol: float = 0.1,
    tau: float = 0.07,
    tau_ctr: float | None = None,
    uniformity_kernel: str | None = None,
    alignment_metric: str | None = None,
    geometry: str | None = None,
    weights: Mapping[str, float] | None = None,
    reduction: str = "sample",
    centroid_term: bool = True,
    volume_term: bool = True,
) -> dict[str, torch.Tensor]:
    """The unweighted terms of Eq. 13 that have a non-zero λ: ``uniformity`` (Σ_m U(Z^m), Eq. 9/14),
    ``alignment`` (L_align: Eq. 10, its geodesic form, or the mean Gram volume, Table 4), ``volume`` (mean
    sqrt(det G_i), Eq. 12) and ``centroid_uniformity`` (U(C) at τ_ctr, Eq. 11), plus ``uniformity/<m>`` for
    each modality; ``centroid_term`` / ``volume_term`` off leave the two parts of L_vol out (Table 2). Arguments
    as in :func:`unialign_loss`.

    Each modality is normalised once and costs one B×B product (uniformity); the centroids cost one more;
    alignment and volume are per-sample (O(B M² d)). Terms with λ = 0 are not computed.
    """
    kernel, metric, tau_ctr = check_unialign_options(
        lambda_uni, lambda_align, lambda_vol, tau, tau_ctr, uniformity_kernel, alignment_metric, geometry, reduction,
        centroid_term, volume_term,
    )  # fmt: skip
    z_dict = check_embedding_dict(z_dict, min_modalities=2, min_batch=2, anchor=anchor)
    units = unit_dict(z_dict)
    centroid_weights = normalized_weights(weights, list(units), what="centroid weights w_m")
    terms: dict[str, torch.Tensor] = {}
    if lambda_uni > 0:
        per_modality = {m: uniformity_of_unit(z, tau, kernel, reduction) for m, z in units.items()}
        terms["uniformity"] = torch.stack(list(per_modality.values())).sum()  # Eq. 13 sums over the M modalities
        terms.update({f"uniformity/{m}": u.detach() for m, u in per_modality.items()})
    # Alignment (Eq. 10) and volume (Eq. 12) share the per-sample cosines; neither moves the anchor.
    ordered = [anchor] + [m for m in units if m != anchor]
    cosines = paired_cosines([units[anchor].detach()] + [units[m] for m in ordered[1:]])
    volume = None
    if (lambda_vol > 0 and volume_term) or (lambda_align > 0 and metric == "volume"):
        volume = volume_from_cosines(cosines, len(ordered)).mean()
    if lambda_align > 0:
        if metric == "volume":
            terms["alignment"] = volume
        else:
            terms["alignment"] = alignment_from_cosines([cosines[(0, j)] for j in range(1, len(ordered))], metric)
    if lambda_vol > 0 and volume_term:
        terms["volume"] = volume
    if lambda_vol > 0 and centroid_term:
        centroids = weighted_centroids(units, centroid_weights)
        terms["centroid_uniformity"] = uniformity_of_unit(centroids, tau_ctr, kernel, reduction)
    return terms


TERM_LAMBDAS = {
    "uniformity": "lambda_uni",
    "alignment": "lambda_align",
    "volume": "lambda_vol",
    "centroid_uniformity": "lambda_vol",
}


def weighted_sum(terms: Mapping[str, torch.Tensor], lambdas: Mapping[str, float]) -> torch.Tensor:
    """Eq. 13: Σ λ · term over the weighted terms (the per-modality logs are not summed again)."""
    return torch.stack(
        [lambdas[TERM_LAMBDAS[name]] * value for name, value in terms.items() if name in TERM_LAMBDAS]
    ).sum()


def unialign_loss(
    z_dict: Mapping[str, torch.Tensor],
    anchor: str = "image",
    lambda_uni: float = 1.0,
    lambda_align: float = 1.0,
    lambda_vol: float = 0.1,
    tau: float = 0.07,
    tau_ctr: float | None = None,
    uniformity_kernel: str | None = None,
    alignment_metric: str | None = None,
    geometry: str | None = None,
    weights: Mapping[str, float] | None = None,
    reduction: str = "sample",
    centroid_term: bool = True,
    volume_term: bool = True,
) -> torch.Tensor:
    """UniAlign (Eq. 13) on a ``{modality: (B, d)}`` batch with anchor a:

        L = λ_uni Σ_m U(Z^m) + λ_align L_align + λ_vol L_vol,   L_vol = U_{τ_ctr}(C) + 1/B Σ_i sqrt(det G_i)  (Eq. 12).

    Args:
        z_dict: paired embeddings, one (B, d) tensor per modality (M ≥ 2, B ≥ 2), normalised inside.
        anchor: the anchor modality; stop-gradient in the alignment and volume terms (it is trained only by
            U(Z^a) and U(C), as the paper states).
        lambda_uni, lambda_align, lambda_vol: the weights of Eq. 13. λ_vol = 0.1 is the paper's setting for
            generation, 1 for retrieval (Appendix F; the registry's ``task`` presets).
        tau: the paper's τ of the Gaussian kernel exp(−δ²/(2τ²)) (Eq. 9/14), 0.07 as in Appendix F.
        tau_ctr: τ of the centroid uniformity U(C) (Table 5); default τ.
        uniformity_kernel: "euclidean" (Eq. 9) or "geodesic" (Eq. 14), also used for U(C).
        alignment_metric: "euclidean" (Eq. 10), "geodesic" (arccos², Table 4) or "volume" (mean sqrt(det G),
            Table 4's volume alignment in place of Eq. 10).
        geometry: shorthand setting both choices above to "euclidean" or "geodesic".
        weights: the centroid weights w_m of Eq. 11 ({modality: w}, default uniform 1/M).
        reduction: "sample" (Eq. 9) or the extension "global" (see :func:`uniformity`).
        centroid_term: keep U(C) in L_vol (Eq. 12); off for Table 2's "U(C) ✗" rows.
        volume_term: keep the Gram volume 1/B Σ_i sqrt(det G_i) in L_vol; off for Table 2's "L_vol ✗" rows.

    Returns:
        the scalar loss (at least float32).

    Raises:
        EmbeddingError: bad shapes, NaN/inf or zero rows, a missing anchor. ConfigError: bad options.
    """
    lambdas = {"lambda_uni": lambda_uni, "lambda_align": lambda_align, "lambda_vol": lambda_vol}
    terms = unialign_terms(
        z_dict, anchor, lambda_uni, lambda_align, lambda_vol, tau, tau_ctr,
        uniformity_kernel, alignment_metric, geometry, weights, reduction, centroid_term, volume_term,
    )  # fmt: skip
    return weighted_sum(terms, lambdas)
