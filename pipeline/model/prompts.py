"""Class prompts with learnable context (CoOp style) and the frozen CLIP text encoder.

Each class is one or more texts (LLM descriptions, the bare class name, or "an expression of
<class>"). A prompt row is ``[SOS] ctx_1 .. ctx_M <text tokens> [EOS]`` padded to the context
length, where the M context vectors are learnable — one set per class (class-specific, the
paper's default) or one shared set. The text tower runs with CLIP's causal mask and the
feature is read at the EOT position; because of the causal mask nothing after the longest
prompt's EOT can change any feature, so the sequence is cut there (an exact speed-up).
"""

from __future__ import annotations

import logging
from typing import Literal

import torch
from torch import nn

__all__ = ["PromptLearner", "TextEncoder"]

logger = logging.getLogger(__name__)


class PromptLearner(nn.Module):
    """Produces the (R, L, width) prompt embeddings for R = total number of class texts."""

    def __init__(
        self,
        texts_per_class: list[list[str]],
        tokenizer,
        width: int,
        n_ctx: int,
        class_specific: bool = True,
        position: Literal["end", "middle", "front"] = "end",
        context_length: int = 77,
        class_names: list[str] | None = None,
    ):
        super().__init__()
        rows = [(c, text) for c, texts in enumerate(texts_per_class) for text in texts]
        if not rows or any(not texts for texts in texts_per_class):
            raise ValueError("every class needs at least one text")
        n_cls = len(texts_per_class)
        self.n_cls, self.n_ctx, self.position = n_cls, n_ctx, position
        ctx = torch.empty(n_cls, n_ctx, width) if class_specific else torch.empty(n_ctx, width)
        nn.init.normal_(ctx, std=0.02)  # as CoOp and the published code
        self.ctx = nn.Parameter(ctx)

        placeholder = " ".join(["X"] * n_ctx)
        if hasattr(tokenizer, "encode"):  # open_clip's SimpleTokenizer; its HF/SigLIP ones have none
            for c, text in rows:
                n_tok = len(tokenizer.encode(text))
                if 1 + n_ctx + n_tok + 1 > context_length:
                    name = class_names[c] if class_names else str(c)
                    logger.warning(
                        f"class {name!r}: text of {n_tok} tokens + {n_ctx} context tokens exceeds CLIP's "
                        f"{context_length}-token context and is truncated: {text[:60]!r}..."
                    )
        tokens = tokenizer([f"{placeholder} {text}" for _, text in rows])  # (R, 77) token ids
        eot = tokens.argmax(dim=-1)  # EOT has the largest id in CLIP's vocabulary
        length = int(eot.max()) + 1
        # Text tokens per row as tokenized (after truncation): between the context and the EOT.
        # Read from the ids, not from encode(), so "middle"/"front" place the text right with any
        # tokenizer (one without encode() used to get 0 here, i.e. the "end" layout).
        text_lens = [int(e) - 1 - n_ctx for e in eot]
        # Token ids, not embeddings, are kept: the embeddings are looked up at forward time from
        # the (frozen) token embedding, so loading a checkpoint's weights can never leave stale
        # copies behind. Not saved: rebuilt from the texts a checkpoint stores.
        self.register_buffer("tokens", tokens[:, :length].clone(), persistent=False)  # (R, L)
        self.register_buffer("eot_index", eot, persistent=False)
        self.register_buffer("row_class", torch.tensor([c for c, _ in rows]), persistent=False)
        self.text_lens = text_lens

    def forward(self, token_embedding: nn.Embedding) -> torch.Tensor:
        ctx = self.ctx[self.row_class] if self.ctx.dim() == 3 else self.ctx.expand(len(self.row_class), -1, -1)
        emb = token_embedding(self.tokens)  # (R, L, W)
        prefix, suffix = emb[:, :1], emb[:, 1 + self.n_ctx :]  # SOS; text, EOS, padding
        if self.position == "end":
            return torch.cat([prefix, ctx, suffix], dim=1)  # (R, L, W)
        rows = []
        half = self.n_ctx // 2
        for i, n in enumerate(self.text_lens):
            text, rest = suffix[i : i + 1, :n], suffix[i : i + 1, n:]
            c = ctx[i : i + 1]
            if self.position == "middle":
                rows.append(torch.cat([prefix[i : i + 1], c[:, :half], text, c[:, half:], rest], dim=1))
            else:  # front
                rows.append(torch.cat([prefix[i : i + 1], text, c, rest], dim=1))
        return torch.cat(rows, dim=0)


class TextEncoder(nn.Module):
    """The CLIP text tower (frozen by the caller) applied to prompt embeddings instead of token ids."""

    def __init__(self, clip_model: nn.Module):
        super().__init__()
        self.token_embedding = clip_model.token_embedding
        self.positional_embedding = clip_model.positional_embedding
        self.transformer = clip_model.transformer
        self.ln_final = clip_model.ln_final
        self.text_projection = clip_model.text_projection
        self.register_buffer("attn_mask", clip_model.attn_mask.clone(), persistent=False)
        self.batch_first = getattr(clip_model.transformer, "batch_first", True)

    def forward(self, prompts: torch.Tensor, eot_index: torch.Tensor) -> torch.Tensor:
        length = prompts.shape[1]
        x = prompts + self.positional_embedding[:length]  # (R, L, W)
        mask = self.attn_mask[:length, :length]  # causal: -inf above the diagonal
        if self.batch_first:
            x = self.transformer(x, attn_mask=mask)
        else:
            x = self.transformer(x.permute(1, 0, 2), attn_mask=mask).permute(1, 0, 2)
        x = self.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), eot_index]  # (R, W) at EOT
        if isinstance(self.text_projection, nn.Linear):
            return self.text_projection(x)
        return x @ self.text_projection  # (R, E)
