"""Residual heads (x + net(x), starting at the identity) for towers already in the anchor's space, and why the mini
recipe needs them: GRAM's volume cannot tell an embedding from its negation."""

from __future__ import annotations

import pytest
import torch

from gen_align.errors import ConfigError
from gen_align.heads import HeadConfig, ProjectionHead
from gen_align.objectives.gram import gram_similarity
from gen_align.train.config import HeadSettings, TrainConfig


def test_a_residual_head_starts_at_the_identity_and_learns_away_from_it():
    torch.manual_seed(0)
    x = torch.randn(32, 16)
    for kind in ("mlp", "linear"):
        head = ProjectionHead(HeadConfig(16, 16, kind=kind, residual=True))
        assert torch.equal(head(x), x)
        optimizer = torch.optim.SGD(head.parameters(), lr=0.1)
        target = -x
        for _ in range(5):
            optimizer.zero_grad()
            (head(x) - target).pow(2).mean().backward()
            optimizer.step()
        assert (head(x) - target).pow(2).mean() < (x - target).pow(2).mean()
    plain = ProjectionHead(HeadConfig(16, 16))
    assert not torch.allclose(plain(x), x)


def test_residual_heads_are_refused_where_they_cannot_be_the_identity():
    with pytest.raises(ConfigError, match="in_dim == out_dim"):
        HeadConfig(96, 64, residual=True)
    with pytest.raises(ConfigError, match="spectral_norm"):
        HeadConfig(64, 64, residual=True, spectral_norm=True)
    with pytest.raises(ConfigError, match="true or false"):
        HeadConfig(64, 64, residual="yes")
    base = {"features": "cache", "out": "run"}
    with pytest.raises(ConfigError, match="list of modality names"):
        TrainConfig(**base, head=HeadSettings(residual="text")).validate()
    with pytest.raises(ConfigError, match="anchor"):
        TrainConfig(**base, head=HeadSettings(residual=["image"])).validate()


def test_the_gram_volume_is_blind_to_the_sign_of_each_embedding():
    """det G(t, i, a) is unchanged when any one vector is negated (each flip multiplies a row and a column of G by
    −1), so GRAM's loss has a minimum for text at −image as well as at +image: from a random start nothing decides
    between them."""
    torch.manual_seed(1)
    t, i, a = (torch.nn.functional.normalize(torch.randn(6, 8), dim=-1) for _ in range(3))
    scores = gram_similarity(t, [i, a])
    torch.testing.assert_close(gram_similarity(-t, [i, a]), scores)
    torch.testing.assert_close(gram_similarity(t, [-i, a]), scores)
    cosine = t @ i.T
    assert not torch.allclose(-cosine, cosine)  # while the cosine that retrieval and the decoder see flips
