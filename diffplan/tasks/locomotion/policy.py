"""Behaviour policies as plain torch modules: a tanh-squashed Gaussian MLP (SAC's actor).

A policy file holds only tensors and plain values, so it loads with
``torch.load(weights_only=True)``; no stable-baselines3 and no pickle are needed to use it.

    {"format": "diffplan-policy", "version": 1, "env": "hopper", "env_id": "Hopper-v5",
     "obs_dim": 11, "act_dim": 3, "hidden": [256, 256], "action_low": [...],
     "action_high": [...], "state_dict": {...}, "meta": {...}}
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from diffplan.errors import DiffplanError

FORMAT = "diffplan-policy"
VERSION = 1
LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0  # SAC's clamp (stable-baselines3 uses the same)


class PolicyError(DiffplanError):
    """A behaviour-policy file is missing, corrupt, of another env or not a policy."""


class GaussianMLPPolicy(nn.Module):
    """obs (B, obs_dim) -> action (B, act_dim) in env units: tanh(N(mu, std)) rescaled."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: list[int], low, high):
        super().__init__()
        layers: list[nn.Module] = []
        width = obs_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.latent = nn.Sequential(*layers)
        self.mu = nn.Linear(width, act_dim)
        self.log_std = nn.Linear(width, act_dim)
        self.register_buffer("low", torch.as_tensor(low, dtype=torch.float32))
        self.register_buffer("high", torch.as_tensor(high, dtype=torch.float32))
        self.obs_dim, self.act_dim, self.hidden = obs_dim, act_dim, list(hidden)

    @torch.no_grad()
    def forward(
        self,
        obs: torch.Tensor,
        deterministic: bool = False,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        z = self.latent(obs)
        mu = self.mu(z)
        if deterministic:
            pre = mu
        else:
            std = self.log_std(z).clamp(LOG_STD_MIN, LOG_STD_MAX).exp()
            noise = torch.randn(mu.shape, generator=generator, dtype=mu.dtype)
            pre = mu + std * noise
        squashed = torch.tanh(pre)
        return self.low + 0.5 * (squashed + 1.0) * (self.high - self.low)

    def act(
        self,
        obs: np.ndarray,
        deterministic: bool = False,
        generator: torch.Generator | None = None,
    ) -> np.ndarray:
        """NumPy in, NumPy out (float32), batched or a single observation."""
        x = torch.as_tensor(np.asarray(obs, dtype=np.float32))
        single = x.ndim == 1
        out = self(x[None] if single else x, deterministic, generator).numpy()
        return out[0] if single else out


def save_policy(
    policy: GaussianMLPPolicy, path: str | os.PathLike, env: str, env_id: str, meta: dict
) -> Path:
    """Write a policy file atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "env": env,
        "env_id": env_id,
        "obs_dim": policy.obs_dim,
        "act_dim": policy.act_dim,
        "hidden": list(policy.hidden),
        "action_low": policy.low.tolist(),
        "action_high": policy.high.tolist(),
        "state_dict": {k: v.detach().cpu().clone() for k, v in policy.state_dict().items()},
        "meta": meta,
    }
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_policy(path: str | os.PathLike, env: str | None = None) -> GaussianMLPPolicy:
    """Load a policy file; `env` (e.g. "hopper") is checked against the file's env."""
    path = Path(path)
    if not path.is_file():
        raise PolicyError(f"policy file {path} not found (train one: diffplan data train-policy)")
    try:
        payload: Any = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise PolicyError(
            f"{path} holds pickled code or objects, not a weights-only policy file; refusing"
            f" to load it (export policies with diffplan data train-policy) [{str(e)[:80]}]"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise PolicyError(
            f"{path} is not a readable policy file (truncated or corrupt?): {str(e)[:120]}"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise PolicyError(f"{path} is not a diffplan policy file (no '{FORMAT}' format tag)")
    if payload.get("version", 0) > VERSION:
        raise PolicyError(f"{path} is policy format v{payload['version']}; upgrade diffplan")
    if env is not None and payload["env"] != env:
        raise PolicyError(
            f"{path} is a policy for '{payload['env']}', not '{env}'; pass a {env} policy"
        )
    policy = GaussianMLPPolicy(
        int(payload["obs_dim"]),
        int(payload["act_dim"]),
        [int(h) for h in payload["hidden"]],
        payload["action_low"],
        payload["action_high"],
    )
    try:
        policy.load_state_dict(payload["state_dict"])
    except (RuntimeError, KeyError) as e:
        raise PolicyError(
            f"{path}: weights do not fit the stated network: {str(e)[:120]}"
        ) from None
    policy.env, policy.env_id, policy.meta = payload["env"], payload["env_id"], payload["meta"]
    return policy.eval()


def from_sb3_actor(actor, action_space) -> GaussianMLPPolicy:
    """Copy a stable-baselines3 SAC actor's tensors into a :class:`GaussianMLPPolicy`."""
    linears = [m for m in actor.latent_pi if isinstance(m, nn.Linear)]
    policy = GaussianMLPPolicy(
        linears[0].in_features,
        actor.mu.out_features,
        [m.out_features for m in linears],
        action_space.low,
        action_space.high,
    )
    mine = [m for m in policy.latent if isinstance(m, nn.Linear)]
    for dst, src in zip(mine, linears, strict=True):
        dst.load_state_dict(src.state_dict())
    policy.mu.load_state_dict(actor.mu.state_dict())
    policy.log_std.load_state_dict(actor.log_std.state_dict())
    return policy.eval()
