"""The DFER-CLIP model: shapes, what trains, the causal mask, and faithfulness to the paper's equations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pipeline.config import ModelConfig
from pipeline.model import PAPER_LOGIT_SCALE, build_model
from pipeline.model.dferclip import class_texts
from tests.micro import micro_model

CLASSES = ["happiness", "sadness", "anger"]
DESCRIPTIONS = {
    "happiness": ["cheeks raised and lip corners pulled up", "a wide smile"],
    "sadness": ["inner brows raised, lip corners pulled down"],
    "anger": ["brows lowered and drawn together, lips pressed"],
}


def micro(**overrides) -> ModelConfig:
    return micro_model(**{"temporal_depth": 2, **overrides})


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(micro(), CLASSES, DESCRIPTIONS)


def test_forward_shapes(model):
    video = torch.rand(2, 8, 3, model.image_size, model.image_size)
    assert model(video).shape == (2, len(CLASSES))
    assert model.encode_frames(video).shape == (2, 8, 64)
    assert model.text_features().shape == (len(CLASSES), 64)
    # uint8 input is scaled to [0, 1] inside the model
    as_uint8 = (video * 255).round().to(torch.uint8)
    torch.testing.assert_close(model(as_uint8), model(as_uint8.float() / 255))


def test_text_sources_and_positions():
    # The texts of each source, written out (the paper's ablation: bare name, "an expression of").
    assert class_texts("class_names", CLASSES, None) == [["happiness"], ["sadness"], ["anger"]]
    assert class_texts("expression_of", CLASSES, None) == [
        ["an expression of happiness"],
        ["an expression of sadness"],
        ["an expression of anger"],
    ]
    assert class_texts("descriptions", CLASSES, DESCRIPTIONS) == [DESCRIPTIONS[c] for c in CLASSES]
    with pytest.raises(ValueError, match="text_source=descriptions needs a description set"):
        class_texts("descriptions", CLASSES, None)
    with pytest.raises(ValueError, match="unknown text source 'captions'"):
        class_texts("captions", CLASSES, None)
    # Each position and context kind builds and runs end to end (where the context goes inside a
    # prompt row is checked token by token in test_prompt_positions.py).
    video = torch.rand(1, 8, 3, 32, 32)
    for source, position, specific in (("class_names", "middle", False), ("expression_of", "front", True)):
        m = build_model(
            micro(text_source=source, class_token_position=position, class_specific_contexts=specific),
            CLASSES,
            DESCRIPTIONS,
        )
        assert m.prompt_learner.position == position
        assert m(video).shape == (1, 3)
        assert m.prompt_learner.ctx.shape == ((3, 4, 64) if specific else (4, 64))


def test_missing_descriptions_is_a_clear_error():
    with pytest.raises(ValueError, match="anger"):
        build_model(micro(), CLASSES, {"happiness": ["x"], "sadness": ["y"]})


def test_gradients_reach_exactly_the_trainable_parts(model):
    groups = model.param_groups(1e-5, 1e-2, 1e-3)
    assert [g["name"] for g in groups] == ["image_encoder", "temporal", "prompt"]
    model.zero_grad(set_to_none=True)
    video = torch.rand(2, 8, 3, 32, 32)
    F.cross_entropy(model(video), torch.tensor([0, 2])).backward()
    trainable = {id(p) for g in groups for p in g["params"]}
    for name, p in model.named_parameters():
        if id(p) in trainable:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, f"frozen parameter {name} received a gradient"
    frozen = [n for n, p in model.named_parameters() if id(p) not in trainable]
    assert any(n.startswith("text_encoder.transformer") for n in frozen)
    assert any(n.startswith("text_encoder.token_embedding") for n in frozen)


def test_causal_mask_in_effect(model):
    pl, te = model.prompt_learner, model.text_encoder
    with torch.no_grad():
        prompts = pl(te.token_embedding).clone()
        p = 3
        at = torch.full((prompts.shape[0],), p)
        base = te(prompts, at)
        later = prompts.clone()
        later[:, p + 1] += torch.randn_like(later[:, p + 1])
        torch.testing.assert_close(te(later, at), base)  # a later token cannot leak back
        earlier = prompts.clone()
        earlier[:, p - 1] += torch.randn_like(earlier[:, p - 1])
        assert not torch.allclose(te(earlier, at), base, atol=1e-4)


def test_eval_reuses_text_features_until_context_changes(model):
    model.eval()
    with torch.no_grad():
        a = model.text_features()
        assert model.text_features() is a
    with torch.no_grad():
        model.prompt_learner.ctx.add_(0.1)
        b = model.text_features()
    assert b is not a and not torch.allclose(a, b)


# ---- independent re-derivation from the paper's equations ---------------------------------


def _layer_norm(x, ln):
    return F.layer_norm(x, ln.normalized_shape, ln.weight, ln.bias, ln.eps)


def _reference_temporal(t, x):
    b, n, d = x.shape
    x = torch.cat([t.cls_token.expand(b, 1, d), x], 1) + t.pos_embedding[:, : n + 1]
    for attn, ff in t.layers:
        h = _layer_norm(x, attn.norm)
        q, k, v = (h @ attn.qkv.weight.t()).chunk(3, -1)
        heads = attn.heads
        q, k, v = (z.reshape(b, n + 1, heads, -1).permute(0, 2, 1, 3) for z in (q, k, v))
        w = torch.einsum("bhid,bhjd->bhij", q, k) / math.sqrt(q.shape[-1])
        o = torch.einsum("bhij,bhjd->bhid", w.softmax(-1), v).permute(0, 2, 1, 3).reshape(b, n + 1, -1)
        x = x + o @ attn.out.weight.t() + attn.out.bias
        h = _layer_norm(x, ff.norm) @ ff.fc1.weight.t() + ff.fc1.bias
        h = 0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h**3)))
        x = x + h @ ff.fc2.weight.t() + ff.fc2.bias
    return x[:, 0]


def _reference_text(clip_text, tokens, ctx_rows, n_ctx):
    """[SOS] ctx <text> [EOS] through CLIP's text transformer with an explicit causal mask."""
    emb = clip_text.token_embedding.weight[tokens]  # (R, 77, W)
    emb = torch.cat([emb[:, :1], ctx_rows, emb[:, 1 + n_ctx :]], 1)
    x = emb + clip_text.positional_embedding
    length = x.shape[1]
    causal = torch.full((length, length), float("-inf")).triu(1)
    for blk in clip_text.transformer.resblocks:
        h = _layer_norm(x, blk.ln_1)
        qkv = h @ blk.attn.in_proj_weight.t() + blk.attn.in_proj_bias
        q, k, v = qkv.chunk(3, -1)
        heads = blk.attn.num_heads
        r = x.shape[0]
        q, k, v = (z.reshape(r, length, heads, -1).permute(0, 2, 1, 3) for z in (q, k, v))
        w = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + causal
        o = (w.softmax(-1) @ v).permute(0, 2, 1, 3).reshape(r, length, -1)
        x = x + o @ blk.attn.out_proj.weight.t() + blk.attn.out_proj.bias
        h = _layer_norm(x, blk.ln_2) @ blk.mlp.c_fc.weight.t() + blk.mlp.c_fc.bias
        h = h * torch.sigmoid(1.702 * h) if type(blk.mlp.gelu).__name__ == "QuickGELU" else F.gelu(h)
        x = x + h @ blk.mlp.c_proj.weight.t() + blk.mlp.c_proj.bias
    x = _layer_norm(x, clip_text.ln_final)
    return x[torch.arange(x.shape[0]), tokens.argmax(-1)] @ clip_text.text_projection


@pytest.mark.parametrize("normalization", ["clip", "none"])
def test_logits_match_independent_rederivation(normalization):
    import open_clip

    torch.manual_seed(1)
    cfg = micro(input_normalization=normalization, temporal_depth=2, logit_scale=PAPER_LOGIT_SCALE)
    m = build_model(cfg, CLASSES, DESCRIPTIONS).eval()
    video = torch.rand(3, 8, 3, 32, 32)
    with torch.no_grad():
        ours = m(video)

        # visual: frames through CLIP's image encoder, optionally CLIP-normalised
        frames = video.flatten(0, 1)
        if normalization == "clip":
            mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
            std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
            frames = (frames - mean) / std
        v = _reference_temporal(m.temporal, m.image_encoder(frames).view(3, 8, -1))

        # text: every description with its class's context, mean of normalised embeddings per class
        tok = open_clip.get_tokenizer("dferclip-micro")
        rows = [(c, d) for c, name in enumerate(CLASSES) for d in DESCRIPTIONS[name]]
        tokens = tok([" ".join(["X"] * 4) + " " + d for _, d in rows])
        ctx_rows = m.prompt_learner.ctx[torch.tensor([c for c, _ in rows])]
        t_rows = F.normalize(_reference_text(m.text_encoder, tokens, ctx_rows, 4), dim=-1)
        t = torch.stack([t_rows[[i for i, (c, _) in enumerate(rows) if c == k]].mean(0) for k in range(3)])

        ref = (v / v.norm(dim=-1, keepdim=True)) @ (t / t.norm(dim=-1, keepdim=True)).t() / 0.01
    assert PAPER_LOGIT_SCALE == 100.0
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=2e-4)


def test_logit_scale_defaults_to_the_backbones_and_is_recorded():
    # Random init: CLIP's starting temperature 0.07, not the pretrained model's 100.
    m = build_model(micro(), CLASSES, DESCRIPTIONS)
    assert m.logit_scale == pytest.approx(1 / 0.07, rel=1e-5)
    assert m.spec["model"]["logit_scale"] == pytest.approx(1 / 0.07, rel=1e-5)
    assert build_model(micro(logit_scale=100.0), CLASSES, DESCRIPTIONS).logit_scale == 100.0
