"""The temporal model against the published Temporal_Transformer_Cls, re-derived by hand.

The reference below writes out the published formulas (models/Temporal_Model.py of the authors'
code): pre-norm residual layers, attention as einsum with scale dim_head**-0.5, the output
projection skipped only when single-head and square, GELU as its tanh formula, the class token
prepended and the positional embedding cut to T+1. LayerNorm is written out too (eps 1e-5, torch's
and the published default), with random affine parameters so that a dropped norm shows.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pipeline.model.temporal import TemporalTransformer


def _layer_norm(x, ln):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-5) * ln.weight + ln.bias


def _gelu(x):
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def _reference(model, x, heads, head_dim, dim):
    b, n, _ = x.shape
    x = torch.cat([model.cls_token.repeat(b, 1, 1), x], dim=1) + model.pos_embedding[:, : n + 1]
    for attn, ff in model.layers:
        h = _layer_norm(x, attn.norm)
        qkv = h @ attn.qkv.weight.t()  # no bias in the published to_qkv
        q, k, v = (
            qkv[..., i * heads * head_dim : (i + 1) * heads * head_dim]
            .reshape(b, n + 1, heads, head_dim)
            .transpose(1, 2)
            for i in range(3)
        )
        dots = torch.einsum("bhid,bhjd->bhij", q, k) * head_dim**-0.5
        out = (
            torch.einsum("bhij,bhjd->bhid", dots.softmax(dim=-1), v).transpose(1, 2).reshape(b, n + 1, heads * head_dim)
        )
        if not (heads == 1 and head_dim == dim):
            out = out @ attn.out.weight.t() + attn.out.bias
        x = x + out
        h = _layer_norm(x, ff.norm) @ ff.fc1.weight.t() + ff.fc1.bias
        x = x + _gelu(h) @ ff.fc2.weight.t() + ff.fc2.bias
    return x[:, 0]


def _randomise_norms(model):
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)


def test_published_defaults():
    # main.py of the published code: depth 1 (--temporal-layers), heads 8, dim_head 64, mlp_dim 1024.
    m = TemporalTransformer(512, 16)
    assert len(m.layers) == 1
    attn, ff = m.layers[0]
    assert attn.heads == 8
    assert attn.qkv.weight.shape == (3 * 8 * 64, 512) and attn.qkv.bias is None
    assert isinstance(attn.out, nn.Linear) and attn.out.weight.shape == (512, 512)
    assert ff.fc1.weight.shape == (1024, 512) and ff.fc2.weight.shape == (512, 1024)
    assert attn.norm.normalized_shape == (512,) and ff.norm.normalized_shape == (512,)
    assert m.cls_token.shape == (1, 1, 512) and m.pos_embedding.shape == (1, 17, 512)
    assert m.num_frames == 16


def test_unit_variance_initialisation():
    # torch.randn as published: mean 0, std 1 (8704 and 512 draws; bounds are > 5 standard errors wide).
    torch.manual_seed(0)
    m = TemporalTransformer(512, 16, heads=1, head_dim=8, mlp_dim=8)
    for p, tol in ((m.pos_embedding, 0.06), (m.cls_token, 0.25)):
        assert abs(p.mean().item()) < tol
        assert abs(p.std().item() - 1) < tol


@pytest.mark.parametrize(
    ("heads", "head_dim", "projected"),
    [(1, 8, False), (1, 4, True), (2, 8, True), (2, 4, True)],
)
def test_output_projection_only_when_not_square_single_head(heads, head_dim, projected):
    attn = TemporalTransformer(8, 4, heads=heads, head_dim=head_dim, mlp_dim=4).layers[0][0]
    if projected:
        assert isinstance(attn.out, nn.Linear)
        assert attn.out.weight.shape == (8, heads * head_dim) and attn.out.bias is not None
    else:
        assert isinstance(attn.out, nn.Identity)


@pytest.mark.parametrize(
    ("depth", "heads", "head_dim", "mlp_dim"),
    [(1, 1, 8, 16), (2, 2, 4, 16), (3, 3, 5, 6)],
)
@pytest.mark.parametrize("frames", [4, 2])
def test_matches_the_published_formulas(depth, heads, head_dim, mlp_dim, frames):
    torch.manual_seed(depth * 10 + frames)
    m = TemporalTransformer(8, 4, depth=depth, heads=heads, head_dim=head_dim, mlp_dim=mlp_dim)
    _randomise_norms(m)
    assert len(m.layers) == depth
    x = torch.randn(3, frames, 8)
    with torch.no_grad():
        got = m(x)
        want = _reference(m, x, heads, head_dim, 8)
    assert got.shape == (3, 8)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_each_video_is_its_own():
    # Attention mixes frames of one video only: a video's embedding does not depend on its batch mates.
    torch.manual_seed(3)
    m = TemporalTransformer(8, 4, depth=2, heads=2, head_dim=4, mlp_dim=16)
    x = torch.randn(3, 4, 8)
    with torch.no_grad():
        torch.testing.assert_close(m(x)[1:2], m(x[1:2]), rtol=1e-5, atol=1e-6)


def test_more_frames_than_built_for_is_refused():
    m = TemporalTransformer(8, 4, heads=2, head_dim=4, mlp_dim=16)
    assert m(torch.randn(1, 4, 8)).shape == (1, 8)  # exactly num_frames is fine
    with pytest.raises(ValueError) as err:
        m(torch.randn(1, 5, 8))
    assert str(err.value) == "got 5 frames, the temporal model was built for at most 4"
