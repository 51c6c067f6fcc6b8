"""The UniAlign objective (Eq. 13): intra-modality uniformity + anchor alignment + tuple-level terms."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from gen_align.checks import non_negative
from gen_align.errors import ConfigError
from gen_align.objectives.alignment import alignment_from_cosines
from gen_align.objectives.uniformity import check_kernel, check_tau, uniformity_of_unit, weighted_centroids
from gen_align.objectives.volume import paired_cosines, volume_from_cosines
from gen_align.tensors import check_embedding_dict, normalized_weights, unit_dict


def unialign_terms(
    z_dict: Mapping[str, torch.Tensor],
    anchor: str = "image",
    lambda_uni: float = 1.0,
    lambda_align: float = 1.0,
    lambda_vol: float = 1.0,
    tau: float = 0.07,
    tau_ctr: float | None = None,
    geometry: str = "euclidean",
    centroid_weights: Mapping[str, float] | None = None,
) -> dict[str, torch.Tensor]:
    """The unweighted terms of Eq. 13 that have a non-zero λ: ``uniformity`` (mean of U(Z_m), Eq. 9/14),
    ``alignment`` (Eq. 10), ``volume`` (mean Gram volume, Eq. 12) and ``centroid_uniformity`` (Eq. 11).

    Each modality is normalised once and costs one B×B product (uniformity); the centroids cost one more;
    alignment and volume are per-sample (O(B M² d)). Terms with λ = 0 are not computed.
    """
    check_kernel(geometry)
    check_tau(tau)
    tau_ctr = tau if tau_ctr is None else tau_ctr
    check_tau(tau_ctr, name="tau_ctr")
    lambdas = {"lambda_uni": lambda_uni, "lambda_align": lambda_align, "lambda_vol": lambda_vol}
    for name, value in lambdas.items():
        non_negative(value, name)
    if not any(lambdas.values()):
        raise ConfigError("lambda_uni, lambda_align and lambda_vol are all 0: the loss would be empty.")
    z_dict = check_embedding_dict(z_dict, min_modalities=2, min_batch=2, anchor=anchor)
    units = unit_dict(z_dict)
    terms: dict[str, torch.Tensor] = {}
    if lambda_uni > 0:
        terms["uniformity"] = torch.stack([uniformity_of_unit(z, tau, geometry) for z in units.values()]).mean()
    # Alignment (Eq. 10) and volume (Eq. 12) share the per-sample cosines; neither moves the anchor.
    ordered = [anchor] + [m for m in units if m != anchor]
    cosines = paired_cosines([units[anchor].detach()] + [units[m] for m in ordered[1:]])
    if lambda_align > 0:
        terms["alignment"] = alignment_from_cosines([cosines[(0, j)] for j in range(1, len(ordered))], geometry)
    if lambda_vol > 0:
        terms["volume"] = volume_from_cosines(cosines, len(ordered)).mean()
        weights = normalized_weights(centroid_weights, list(units), what="centroid weights")
        terms["centroid_uniformity"] = uniformity_of_unit(weighted_centroids(units, weights), tau_ctr, geometry)
    return terms


TERM_LAMBDAS = {
    "uniformity": "lambda_uni",
    "alignment": "lambda_align",
    "volume": "lambda_vol",
    "centroid_uniformity": "lambda_vol",
}


def unialign_loss(
    z_dict: Mapping[str, torch.Tensor],
    anchor: str = "image",
    lambda_uni: float = 1.0,
    lambda_align: float = 1.0,
    lambda_vol: float = 1.0,
    tau: float = 0.07,
    tau_ctr: float | None = None,
    geometry: str = "euclidean",
) -> torch.Tensor:
    """UniAlign (Eq. 13) on a ``{modality: (B, d)}`` batch with anchor a (M modalities):

        L = λ_uni · 1/M Σ_m U(Z_m) + λ_align · L_align + λ_vol · ( 1/B Σ_i Vol_i + U(C) ),

    U: uniformity (Eq. 9, or Eq. 14 with geometry="geodesic"); L_align: anchor alignment (Eq. 10, anchor
    stop-gradient); Vol: Gram volume of each sample's M vectors (Eq. 12, anchor stop-gradient); U(C):
    uniformity of the normalised uniform centroids (Eq. 11) at temperature τ_ctr (default τ). The tuple
    terms (volume shrinks each tuple, centroid uniformity spreads tuples apart) share λ_vol.
    """
    lambdas = {"lambda_uni": lambda_uni, "lambda_align": lambda_align, "lambda_vol": lambda_vol}
    terms = unialign_terms(z_dict, anchor, lambda_uni, lambda_align, lambda_vol, tau, tau_ctr, geometry)
    return torch.stack([lambdas[TERM_LAMBDAS[name]] * value for name, value in terms.items()]).sum()
