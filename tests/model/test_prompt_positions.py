"""Where the learnable context goes in each prompt row, re-derived by hand for every class-token
position ("end", "middle", "front", as CoOp and the published code place them).

The token embedding is replaced by one whose vector *is* the token id, and every context vector
carries its (class, index) label, so each output position can be read back as either a token id or
a context slot and compared with the layout written out below from CoOp's definition:

- end:    [SOS] ctx_1 .. ctx_M  <text>  [EOT] pad..
- middle: [SOS] ctx_1 .. ctx_{M//2}  <text>  ctx_{M//2+1} .. ctx_M  [EOT] pad..
- front:  [SOS] <text>  ctx_1 .. ctx_M  [EOT] pad..
"""

from __future__ import annotations

import open_clip
import pytest
import torch
from torch import nn

from pipeline.model.prompts import PromptLearner

TOKENIZER = open_clip.get_tokenizer("ViT-B-32")  # CLIP's BPE, shipped with open_clip (no download)
SOS, EOT = 49406, 49407
M = 3  # odd, so that M // 2 (CoOp's half) differs from a rounded-up half
# Class 0 has two texts of different lengths; rows of one class share that class's context.
TEXTS = [["a wide smile", "cheeks raised and lip corners pulled up"], ["brows lowered"]]


def _id_embedding() -> nn.Embedding:
    emb = nn.Embedding(SOS + 2, 2)
    with torch.no_grad():
        emb.weight.zero_()
        emb.weight[:, 0] = torch.arange(SOS + 2, dtype=torch.float32)  # vector of token t = (t, 0)
    return emb


def _label_context(learner: PromptLearner) -> None:
    # Context vector k of class c = (-1, 100 c + k + 1); shared contexts: (-1, k + 1).
    with torch.no_grad():
        if learner.ctx.dim() == 3:
            for c in range(learner.ctx.shape[0]):
                for k in range(learner.n_ctx):
                    learner.ctx[c, k] = torch.tensor([-1.0, 100 * c + k + 1])
        else:
            for k in range(learner.n_ctx):
                learner.ctx[k] = torch.tensor([-1.0, k + 1])


def _read_back(row: torch.Tensor) -> list:
    """Each position as a token id (int) or a context slot ("ctx", class, k)."""
    out = []
    for v in row.tolist():
        if v[0] >= 0:
            out.append(int(v[0]))
        else:
            label = int(v[1])
            out.append(("ctx", label // 100, label % 100 - 1))
    return out


def _expected(position: str, cls: int, words: list[int], length: int, specific: bool, m: int = M) -> list:
    ctx = [("ctx", cls if specific else 0, k) for k in range(m)]
    if position == "end":
        body = ctx + words
    elif position == "middle":
        body = ctx[: m // 2] + words + ctx[m // 2 :]
    else:  # front
        body = words + ctx
    row = [SOS, *body, EOT]
    return row + [0] * (length - len(row))


@pytest.mark.parametrize("specific", [True, False], ids=["class-specific", "shared"])
@pytest.mark.parametrize("position", ["end", "middle", "front"])
def test_context_and_class_tokens_sit_where_coop_puts_them(position, specific):
    learner = PromptLearner(TEXTS, TOKENIZER, width=2, n_ctx=M, class_specific=specific, position=position)
    _label_context(learner)
    prompts = learner(_id_embedding())
    rows = [(c, TOKENIZER.encode(text)) for c, texts in enumerate(TEXTS) for text in texts]
    length = max(1 + M + len(words) + 1 for _, words in rows)  # cut after the longest prompt's EOT
    assert prompts.shape == (len(rows), length, 2)
    for i, (c, words) in enumerate(rows):
        assert _read_back(prompts[i]) == _expected(position, c, words, length, specific), (position, i)
        # the text encoder reads the feature at the EOT, wherever the context went
        assert int(learner.eot_index[i]) == 1 + M + len(words)
        assert int(prompts[i, learner.eot_index[i], 0]) == EOT


def test_text_longer_than_the_context_is_cut_to_fit():
    # 77 tokens: SOS + M context + at most 77 - 2 - M text tokens + EOT; in "front" the context must
    # still follow the (cut) text and the EOT stay last.
    long_text = " ".join(["smile"] * 90)
    learner = PromptLearner([[long_text]], TOKENIZER, width=2, n_ctx=M, position="front")
    _label_context(learner)
    row = _read_back(learner(_id_embedding())[0])
    n_words = 77 - 2 - M
    assert learner.text_lens == [n_words]
    assert len(row) == 77 and row[0] == SOS and row[-1] == EOT
    assert row[1 : 1 + n_words] == TOKENIZER.encode(long_text)[:n_words]
    assert row[1 + n_words : 1 + n_words + M] == [("ctx", 0, k) for k in range(M)]


class _CallOnly:
    """A tokenizer with only ``__call__`` (no ``encode()``), as open_clip's HF and SigLIP ones."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, texts):
        return self.inner(texts)


@pytest.mark.parametrize("position", ["middle", "front"])
def test_positions_do_not_depend_on_the_tokenizer_having_encode(position):
    learner = PromptLearner(TEXTS, _CallOnly(TOKENIZER), width=2, n_ctx=M, position=position)
    _label_context(learner)
    prompts = learner(_id_embedding())
    rows = [(c, TOKENIZER.encode(text)) for c, texts in enumerate(TEXTS) for text in texts]
    length = max(1 + M + len(words) + 1 for _, words in rows)
    for i, (c, words) in enumerate(rows):
        assert _read_back(prompts[i]) == _expected(position, c, words, length, True), (position, i)


@pytest.mark.parametrize("m", [1, 2, 4, 5])
def test_middle_splits_the_context_at_m_div_2(m):
    # CoOp's half_n_ctx = n_ctx // 2 for other lengths than the odd M above: 0|1, 1|1, 2|2, 2|3
    learner = PromptLearner(TEXTS, TOKENIZER, width=2, n_ctx=m, position="middle")
    _label_context(learner)
    prompts = learner(_id_embedding())
    rows = [(c, TOKENIZER.encode(text)) for c, texts in enumerate(TEXTS) for text in texts]
    length = max(1 + m + len(words) + 1 for _, words in rows)
    for i, (c, words) in enumerate(rows):
        assert _read_back(prompts[i]) == _expected("middle", c, words, length, True, m), (m, i)
