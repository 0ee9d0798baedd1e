"""The temporal model: a small pre-norm Transformer over per-frame CLIP embeddings.

Follows the paper and the published code (docs/design.md §1): a learnable class token is
prepended, a learnable positional embedding of length T+1 is added, ``depth`` pre-norm
layers run, and the output class token is the video embedding. Attention uses PyTorch's
fused ``scaled_dot_product_attention`` (same maths as the published einsum form, faster).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["TemporalTransformer"]


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int, head_dim: int):
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, inner * 3, bias=False)  # no bias, as published
        # The published code skips the output projection when it would be square and single-head.
        self.out = nn.Identity() if (heads == 1 and head_dim == dim) else nn.Linear(inner, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(self.norm(x)).chunk(3, dim=-1)  # 3 x (B, N, H*D)
        q, k, v = (t.view(b, n, self.heads, -1).transpose(1, 2) for t in (q, k, v))  # (B, H, N, D)
        y = F.scaled_dot_product_attention(q, k, v)  # (B, H, N, D); scale 1/sqrt(D)
        return self.out(y.transpose(1, 2).reshape(b, n, -1))  # (B, N, dim)


class _FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # GELU in its tanh approximation: the published code writes that formula out by hand.
        return self.fc2(F.gelu(self.fc1(self.norm(x)), approximate="tanh"))


class TemporalTransformer(nn.Module):
    """(B, T, dim) frame embeddings -> (B, dim) video embedding (the output class token)."""

    def __init__(
        self, dim: int, num_frames: int, depth: int = 1, heads: int = 8, head_dim: int = 64, mlp_dim: int = 1024
    ):
        super().__init__()
        self.num_frames = num_frames
        # Unit-variance initialisation, as published (torch.randn).
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.pos_embedding = nn.Parameter(torch.randn(1, num_frames + 1, dim))
        self.layers = nn.ModuleList(
            nn.ModuleList([_Attention(dim, heads, head_dim), _FeedForward(dim, mlp_dim)]) for _ in range(depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        if t > self.num_frames:
            raise ValueError(f"got {t} frames, the temporal model was built for at most {self.num_frames}")
        x = torch.cat([self.cls_token.expand(b, -1, -1), x], dim=1)  # (B, T+1, dim)
        x = x + self.pos_embedding[:, : t + 1]
        for attn, ff in self.layers:
            x = x + attn(x)
            x = x + ff(x)
        return x[:, 0]  # (B, dim)
