"""Denoising networks over trajectories: Diffuser's temporal U-Net and its value head.

Both take trajectories as (B, H, D) with D = act_dim + obs_dim (see `TrajectorySpec`) and a
diffusion timestep per sample (B,); convolutions run over the horizon axis.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class SinusoidalPosEmb(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, device=t.device) / (half - 1))
        angles = t.float()[:, None] * freqs[None]
        return torch.cat([angles.sin(), angles.cos()], dim=-1)


def _groups(channels: int, preferred: int = 8) -> int:
    return math.gcd(channels, preferred)


class Conv1dBlock(nn.Sequential):
    """Conv1d -> GroupNorm -> Mish."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__(
            nn.Conv1d(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
            nn.GroupNorm(_groups(out_channels), out_channels),
            nn.Mish(),
        )


class ResidualTemporalBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, embed_dim: int, kernel_size: int):
        super().__init__()
        self.block_in = Conv1dBlock(in_channels, out_channels, kernel_size)
        self.block_out = Conv1dBlock(out_channels, out_channels, kernel_size)
        self.embed = nn.Sequential(nn.Mish(), nn.Linear(embed_dim, out_channels))
        self.residual = (
            nn.Conv1d(in_channels, out_channels, 1)
            if in_channels != out_channels
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        """x: (B, C_in, H), embedding: (B, E) -> (B, C_out, H)"""
        h = self.block_in(x) + self.embed(embedding)[:, :, None]
        return self.block_out(h) + self.residual(x)


class TimeCondEmbedding(nn.Module):
    """Time embedding, plus an optional conditioning vector (e.g. a target return).

    Samples whose `cond_mask` is False get a learned "no condition" embedding instead,
    which is what classifier-free guidance contrasts against.
    """

    def __init__(self, dim: int, cond_dim: int = 0):
        super().__init__()
        self.time_mlp = nn.Sequential(
            SinusoidalPosEmb(dim), nn.Linear(dim, dim * 4), nn.Mish(), nn.Linear(dim * 4, dim)
        )
        self.cond_dim = cond_dim
        if cond_dim > 0:
            self.cond_mlp = nn.Sequential(nn.Linear(cond_dim, dim), nn.Mish(), nn.Linear(dim, dim))
            self.null_cond = nn.Parameter(torch.zeros(dim))
        self.out_dim = dim * 2 if cond_dim > 0 else dim

    def forward(
        self,
        t: torch.Tensor,
        cond: torch.Tensor | None = None,
        cond_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        emb = self.time_mlp(t)
        if self.cond_dim == 0:
            if cond is not None:
                raise ValueError("this network was built without a conditioning input (cond_dim=0)")
            return emb
        null = self.null_cond.expand(emb.shape[0], -1)
        if cond is None:
            cond_emb = null
        else:
            cond_emb = self.cond_mlp(cond)
            if cond_mask is not None:
                cond_emb = torch.where(cond_mask[:, None], cond_emb, null)
        return torch.cat([emb, cond_emb], dim=-1)


def _check_horizon(horizon: int, n_levels: int) -> None:
    factor = 2 ** (n_levels - 1)
    if horizon % factor != 0:
        raise ValueError(
            f"horizon {horizon} must be divisible by {factor} for a U-Net with {n_levels} "
            f"levels; change the horizon or dim_mults"
        )


class TemporalUnet(nn.Module):
    """Diffuser's 1-D U-Net: residual temporal blocks, strided down/up-sampling."""

    def __init__(
        self,
        transition_dim: int,
        dim: int = 32,
        dim_mults: tuple[int, ...] = (1, 2, 4, 8),
        kernel_size: int = 5,
        cond_dim: int = 0,
    ):
        super().__init__()
        self.transition_dim = transition_dim
        self.n_levels = len(dim_mults)
        dims = [transition_dim, *[dim * m for m in dim_mults]]
        in_out = list(zip(dims[:-1], dims[1:], strict=True))
        self.embedding = TimeCondEmbedding(dim, cond_dim)
        embed_dim = self.embedding.out_dim

        self.downs = nn.ModuleList()
        for i, (c_in, c_out) in enumerate(in_out):
            last = i == len(in_out) - 1
            self.downs.append(
                nn.ModuleList(
                    [
                        ResidualTemporalBlock(c_in, c_out, embed_dim, kernel_size),
                        ResidualTemporalBlock(c_out, c_out, embed_dim, kernel_size),
                        nn.Conv1d(c_out, c_out, 3, 2, 1) if not last else nn.Identity(),
                    ]
                )
            )
        mid = dims[-1]
        self.mid1 = ResidualTemporalBlock(mid, mid, embed_dim, kernel_size)
        self.mid2 = ResidualTemporalBlock(mid, mid, embed_dim, kernel_size)
        self.ups = nn.ModuleList()
        # One up-sampling per down-sampling; the finest level's skip goes unused, as in Diffuser.
        for c_in, c_out in reversed(in_out[1:]):
            self.ups.append(
                nn.ModuleList(
                    [
                        ResidualTemporalBlock(c_out * 2, c_in, embed_dim, kernel_size),
                        ResidualTemporalBlock(c_in, c_in, embed_dim, kernel_size),
                        nn.ConvTranspose1d(c_in, c_in, 4, 2, 1),
                    ]
                )
            )
        self.final = nn.Sequential(
            Conv1dBlock(dim, dim, kernel_size), nn.Conv1d(dim, transition_dim, 1)
        )

    @classmethod
    def from_config(cls, model, transition_dim: int, cond_dim: int = 0) -> TemporalUnet:
        return cls(transition_dim, model.dim, tuple(model.dim_mults), model.kernel_size, cond_dim)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        cond: torch.Tensor | None = None,
        cond_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x: (B, H, D), t: (B,), cond: (B, C) or None, cond_mask: (B,) bool -> (B, H, D)"""
        _check_horizon(x.shape[1], self.n_levels)
        emb = self.embedding(t, cond, cond_mask)
        h = x.transpose(1, 2)
        skips = []
        for block1, block2, down in self.downs:
            h = block2(block1(h, emb), emb)
            skips.append(h)
            h = down(h)
        h = self.mid2(self.mid1(h, emb), emb)
        for block1, block2, up in self.ups:
            h = torch.cat([h, skips.pop()], dim=1)
            h = block2(block1(h, emb), emb)
            h = up(h)
        return self.final(h).transpose(1, 2)


class ValueNet(nn.Module):
    """The down-sampling half of the temporal U-Net with a scalar head: V(x_t, t) -> (B,)."""

    def __init__(
        self,
        transition_dim: int,
        horizon: int,
        dim: int = 32,
        dim_mults: tuple[int, ...] = (1, 2, 4, 8),
        kernel_size: int = 5,
    ):
        super().__init__()
        _check_horizon(horizon, len(dim_mults))
        dims = [transition_dim, *[dim * m for m in dim_mults]]
        self.embedding = TimeCondEmbedding(dim)
        self.blocks = nn.ModuleList()
        for c_in, c_out in zip(dims[:-1], dims[1:], strict=True):
            self.blocks.append(
                nn.ModuleList(
                    [
                        ResidualTemporalBlock(c_in, c_out, dim, kernel_size),
                        ResidualTemporalBlock(c_out, c_out, dim, kernel_size),
                        nn.Conv1d(c_out, c_out, 3, 2, 1),
                    ]
                )
            )
        final_len = horizon
        for _ in dim_mults:
            final_len = (final_len + 1) // 2
        self.head = nn.Sequential(
            nn.Linear(dims[-1] * final_len + dim, dims[-1]), nn.Mish(), nn.Linear(dims[-1], 1)
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x: (B, H, D), t: (B,) -> (B,)"""
        emb = self.embedding(t)
        h = x.transpose(1, 2)
        for block1, block2, down in self.blocks:
            h = down(block2(block1(h, emb), emb))
        return self.head(torch.cat([h.flatten(1), emb], dim=-1)).squeeze(-1)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
