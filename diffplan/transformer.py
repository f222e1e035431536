"""A DiT-style 1-D transformer over the planned steps: an alternative to the temporal U-Net.

Each planned step is a token (its transition vector projected to `dim`, plus a learned
embedding of its position in the plan). The diffusion time and the optional condition (a
target return) steer every block through adaptive layer norm with zero-initialised gates
(adaLN-Zero, Peebles & Xie 2023), so a fresh model starts as the identity on its residual
stream. Selected with `model.type: transformer`; `model.dim` is the width, `model.depth` the
number of blocks, `model.heads` the attention heads.
"""

from __future__ import annotations

import torch
from torch import nn

from diffplan.networks import TimeCondEmbedding


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None, :]) + shift[:, None, :]


class DiTBlock(nn.Module):
    """Self-attention and an MLP over the tokens, each behind an adaLN-Zero modulation."""

    def __init__(self, dim: int, heads: int, embed_dim: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(embed_dim, 6 * dim))
        nn.init.zeros_(self.modulation[1].weight)
        nn.init.zeros_(self.modulation[1].bias)

    def forward(self, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        """x: (B, H, dim), embedding: (B, E) -> (B, H, dim)"""
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(embedding).chunk(6, -1)
        h = _modulate(self.norm1(x), shift1, scale1)
        x = x + gate1[:, None, :] * self.attn(h, h, h, need_weights=False)[0]
        h = _modulate(self.norm2(x), shift2, scale2)
        return x + gate2[:, None, :] * self.mlp(h)


class TrajectoryTransformer(nn.Module):
    """x_t (B, H, D), t (B,) [, cond (B, C), cond_mask (B,)] -> (B, H, D), like `TemporalUnet`."""

    def __init__(
        self,
        transition_dim: int,
        horizon: int,
        dim: int = 64,
        depth: int = 4,
        heads: int = 4,
        cond_dim: int = 0,
    ):
        super().__init__()
        if dim % heads != 0:
            raise ValueError(f"transformer width {dim} must be divisible by heads {heads}")
        self.transition_dim, self.horizon = transition_dim, horizon
        self.embedding = TimeCondEmbedding(dim, cond_dim)
        self.tokens = nn.Linear(transition_dim, dim)
        self.position = nn.Parameter(torch.randn(1, horizon, dim) * 0.02)
        self.blocks = nn.ModuleList(
            DiTBlock(dim, heads, self.embedding.out_dim) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.final_modulation = nn.Sequential(nn.SiLU(), nn.Linear(self.embedding.out_dim, 2 * dim))
        self.out = nn.Linear(dim, transition_dim)
        for layer in (self.final_modulation[1], self.out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    @classmethod
    def from_config(cls, model, transition_dim: int, cond_dim: int = 0) -> TrajectoryTransformer:
        return cls(transition_dim, model.horizon, model.dim, model.depth, model.heads, cond_dim)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        cond: torch.Tensor | None = None,
        cond_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if x.shape[1] != self.horizon:
            raise ValueError(
                f"this transformer was built for plans of {self.horizon} steps, got {x.shape[1]}"
            )
        emb = self.embedding(t, cond, cond_mask)
        h = self.tokens(x) + self.position
        for block in self.blocks:
            h = block(h, emb)
        shift, scale = self.final_modulation(emb).chunk(2, -1)
        return self.out(_modulate(self.norm(h), shift, scale))
