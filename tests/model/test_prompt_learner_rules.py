"""The prompt learner's other rules, with values written out by hand: the context initialisation
(N(0, 0.02), as CoOp), what it saves, the too-long-text warning at its bound, the refusals, and
the text encoder's two layouts (sequence-first transformers, a Linear projection) giving the same
features as the batch-first / matrix form."""

from __future__ import annotations

import logging

import open_clip
import pytest
import torch
from torch import nn

from pipeline.model import build_model
from pipeline.model.prompts import PromptLearner, TextEncoder
from tests.micro import micro_model

TOKENIZER = open_clip.get_tokenizer("ViT-B-32")
M = 4


def test_context_vectors_start_as_n_0_002():
    torch.manual_seed(0)
    specific = PromptLearner([["a smile"]] * 10, TOKENIZER, width=512, n_ctx=M)
    shared = PromptLearner([["a smile"]] * 10, TOKENIZER, width=512, n_ctx=M, class_specific=False)
    assert specific.ctx.shape == (10, M, 512) and shared.ctx.shape == (M, 512)
    for ctx in (specific.ctx, shared.ctx):  # 20480 and 2048 draws: std within a few per cent
        assert float(ctx.detach().std()) == pytest.approx(0.02, rel=0.06)
        assert abs(float(ctx.detach().mean())) < 0.002
        assert ctx.requires_grad


def test_only_the_context_is_saved():
    learner = PromptLearner([["a smile"], ["a frown", "lowered brows"]], TOKENIZER, width=8, n_ctx=M)
    assert list(learner.state_dict()) == ["ctx"]  # token ids are rebuilt from the stored texts
    assert learner.row_class.tolist() == [0, 1, 1]
    assert (learner.n_cls, learner.n_ctx, learner.position) == (2, M, "end")


@pytest.mark.parametrize("texts", [[], [["a smile"], []]], ids=["no classes", "a class without text"])
def test_every_class_needs_a_text(texts):
    with pytest.raises(ValueError, match="^every class needs at least one text$"):
        PromptLearner(texts, TOKENIZER, width=8, n_ctx=M)


def test_the_truncation_warning_starts_one_token_past_the_context(caplog):
    fits = " ".join(["smile"] * (77 - 2 - M))  # SOS + M context + 71 words + EOT = 77 exactly
    with caplog.at_level(logging.WARNING, logger="pipeline.model.prompts"):
        PromptLearner([[fits]], TOKENIZER, width=8, n_ctx=M, class_names=["happiness"])
    assert caplog.records == []
    over = fits + " smile"
    with caplog.at_level(logging.WARNING, logger="pipeline.model.prompts"):
        learner = PromptLearner([["a smile"], [over]], TOKENIZER, width=8, n_ctx=M, class_names=["sad", "happy"])
    (record,) = caplog.records
    assert record.getMessage() == (
        f"class 'happy': text of 72 tokens + {M} context tokens exceeds CLIP's 77-token context and is "
        f"truncated: {over[:60]!r}..."
    )
    assert learner.text_lens == [2, 71]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pipeline.model.prompts"):
        PromptLearner([[over]], TOKENIZER, width=8, n_ctx=M)  # no class names: the class index
    assert caplog.records[0].getMessage().startswith("class '0': text of 72 tokens")


class _SeqFirst(nn.Module):
    """The same transformer, called with (L, N, D) as older open_clip text towers are."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.batch_first = False

    def forward(self, x, attn_mask=None):
        return self.inner(x.permute(1, 0, 2), attn_mask=attn_mask).permute(1, 0, 2)


class _NoFlag(nn.Module):
    """A batch-first transformer that does not say so (no ``batch_first`` attribute)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x, attn_mask=None):
        return self.inner(x, attn_mask=attn_mask)


def test_the_layout_is_read_from_the_transformer_and_defaults_to_batch_first():
    torch.manual_seed(0)
    model = build_model(micro_model(text_source="class_names"), ["happiness", "sadness", "anger"])
    clip, pl = model.text_encoder, model.prompt_learner
    assert "text_encoder.attn_mask" not in model.state_dict()  # CLIP's causal mask is rebuilt, not saved
    with torch.no_grad():
        prompts = pl(clip.token_embedding)
        reference = clip(prompts, pl.eot_index)
        inner = clip.transformer
        for wrapper, batch_first in ((_SeqFirst(inner), False), (_NoFlag(inner), True)):
            clip.transformer = wrapper
            enc = TextEncoder(clip)  # reads the layout from clip.transformer
            assert enc.batch_first is batch_first
            torch.testing.assert_close(enc(prompts, pl.eot_index), reference)
            assert "attn_mask" not in enc.state_dict()


def test_sequence_first_transformers_and_linear_projections_give_the_same_features():
    torch.manual_seed(0)
    model = build_model(micro_model(text_source="class_names"), ["happiness", "sadness", "anger"])
    enc, pl = model.text_encoder, model.prompt_learner
    with torch.no_grad():
        prompts = pl(enc.token_embedding)
        reference = enc(prompts, pl.eot_index)
        enc.transformer, enc.batch_first = _SeqFirst(enc.transformer), False
        torch.testing.assert_close(enc(prompts, pl.eot_index), reference)
        enc.transformer, enc.batch_first = enc.transformer.inner, True
        matrix = enc.text_projection  # (W, E), applied as x @ P
        linear = nn.Linear(matrix.shape[0], matrix.shape[1], bias=False)
        linear.weight.copy_(matrix.T)
        del enc.text_projection  # a registered Parameter: make room for a module of that name
        enc.text_projection = linear
        torch.testing.assert_close(enc(prompts, pl.eot_index), reference)
    assert reference.shape == (3, matrix.shape[1])
