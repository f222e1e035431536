"""Inverse dynamics a_t = f(s_t, s_t+k) for states-only planning (Decision Diffuser's way).

A states-only diffusion model (`model.states_only: true`) plans observations; this MLP turns
the current state and the next planned one (k = the plan's stride) into the action. It is
trained from the diffusion checkpoint's own data (`diffplan train-inverse`) and saved as one
weights-only file with the fingerprint of the model it serves:

    {"format": "diffplan-inverse-dynamics", "version": 1, "fingerprint": str,
     "net": {"obs_dim", "act_dim", "hidden", "stride"}, "state_dict": ...,
     "obs_normalizer": {...}, "action_normalizer": {...}, "step": int, "meta": {...}}
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from diffplan.checkpoint import LoadedModel, load_checkpoint, read_part, save_checkpoint
from diffplan.distributed import resolve_device
from diffplan.errors import CheckpointError, DiffplanError
from diffplan.normalizer import Normalizer

FORMAT = "diffplan-inverse-dynamics"
VERSION = 1


class InverseDynamics(nn.Module):
    """(obs (B, obs_dim), next_obs (B, obs_dim)) env units -> action (B, act_dim) env units."""

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden: int,
        obs_normalizer: Normalizer,
        action_normalizer: Normalizer,
    ):
        super().__init__()
        self.obs_dim, self.act_dim, self.hidden = obs_dim, act_dim, hidden
        self.net = nn.Sequential(
            nn.Linear(2 * obs_dim, hidden),
            nn.Mish(),
            nn.Linear(hidden, hidden),
            nn.Mish(),
            nn.Linear(hidden, act_dim),
        )
        self.obs_normalizer, self.action_normalizer = obs_normalizer, action_normalizer

    def normalized(self, obs: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
        """The action in the action normalizer's units (what the loss is taken on)."""
        return self.net(torch.cat([obs, next_obs], dim=-1))

    def forward(self, obs: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
        n = self.obs_normalizer.normalize
        with torch.no_grad():
            out = self.normalized(n(obs.float()), n(next_obs.float()))
        if self.action_normalizer.kind == "limits":
            out = out.clamp(-1.0, 1.0)  # never beyond the data's action range
        return self.action_normalizer.unnormalize(out)


def step_pairs(episodes, stride: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(s_t, s_t+stride, a_t) for every t with t + stride inside its episode."""
    idx = []
    for start, length in zip(episodes.episode_starts, episodes.lengths, strict=True):
        if length > stride:
            idx.append(np.arange(start, start + length - stride))
    if not idx:
        raise DiffplanError(f"no episode is longer than the stride {stride}; nothing to learn")
    rows = np.concatenate(idx)
    obs = episodes.observations
    return obs[rows], obs[rows + stride], episodes.actions[rows]


def _fingerprint(loaded: LoadedModel) -> str:
    from diffplan.value_training import model_fingerprint

    return model_fingerprint(loaded.spec, loaded.normalizer, loaded.diffusion)


def train_inverse_dynamics(
    diffusion_checkpoint: str | os.PathLike,
    out_path: str | os.PathLike,
    steps: int = 5000,
    batch_size: int = 256,
    lr: float = 1e-3,
    hidden: int = 256,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Fit f(s_t, s_t+stride) -> a_t on the checkpoint's dataset; write it to `out_path`."""
    from diffplan.preflight import check_value_paths
    from diffplan.trainer import load_episodes

    out_path = Path(out_path)
    check_value_paths(diffusion_checkpoint, out_path, overwrite)  # never the checkpoint itself
    if steps < 1 or batch_size < 1:
        raise DiffplanError("--steps and --batch-size must be >= 1")
    dev = resolve_device(device)
    loaded = load_checkpoint(diffusion_checkpoint, device=dev)
    episodes = load_episodes(loaded.config, keep_actions=True)
    if episodes.act_dim == 0:
        raise DiffplanError("the dataset has no actions to learn inverse dynamics from")
    obs, next_obs, actions = step_pairs(episodes, loaded.spec.stride)
    obs_norm = loaded.normalizer.select(loaded.spec.observation_slice)
    act_norm = Normalizer.fit("limits", actions)
    torch.manual_seed(seed)
    model = InverseDynamics(episodes.obs_dim, episodes.act_dim, hidden, obs_norm, act_norm).to(dev)
    x = torch.cat(
        [obs_norm.normalize(torch.as_tensor(obs)), obs_norm.normalize(torch.as_tensor(next_obs))],
        dim=-1,
    ).float()
    y = act_norm.normalize(torch.as_tensor(actions)).float()
    optimizer = torch.optim.Adam(model.net.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    from tqdm.auto import tqdm

    losses = []
    for _ in tqdm(range(steps), disable=not progress, desc="inverse dynamics", unit="step"):
        i = torch.randint(len(x), (batch_size,), generator=gen)
        loss = nn.functional.mse_loss(model.net(x[i].to(dev)), y[i].to(dev))
        if not torch.isfinite(loss):
            raise DiffplanError("inverse-dynamics loss became NaN/inf; lower --lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    tail = torch.stack(losses[-100:]).mean().item()
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "fingerprint": _fingerprint(loaded),
        "net": {
            "obs_dim": episodes.obs_dim,
            "act_dim": episodes.act_dim,
            "hidden": hidden,
            "stride": loaded.spec.stride,
        },
        "state_dict": {k: v.detach().cpu() for k, v in model.net.state_dict().items()},
        "obs_normalizer": obs_norm.state_dict(),
        "action_normalizer": act_norm.state_dict(),
        "step": steps,
        "meta": {"final_loss": tail, "seed": seed, "pairs": len(x),
                 "diffusion_checkpoint": str(diffusion_checkpoint)},
    }  # fmt: skip
    return save_checkpoint(payload, out_path)


def load_inverse_dynamics(path: str | os.PathLike, loaded: LoadedModel) -> InverseDynamics:
    """The inverse-dynamics model in `path`, checked against the diffusion model it serves."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"inverse-dynamics file {path} not found; train it with `diffplan train-inverse "
            f"--checkpoint {loaded.path} --out {path}`"
        )
    fix = f"retrain it with `diffplan train-inverse --checkpoint {loaded.path}`"
    raw = read_part(path, FORMAT, None, "inverse-dynamics file", fix)
    if raw.get("fingerprint") != _fingerprint(loaded):
        raise CheckpointError(
            f"{path} was trained for another diffusion model; retrain it with "
            f"`diffplan train-inverse --checkpoint {loaded.path}`"
        )
    try:
        net = raw["net"]
        model = InverseDynamics(
            int(net["obs_dim"]),
            int(net["act_dim"]),
            int(net["hidden"]),
            Normalizer.from_state_dict(raw["obs_normalizer"]),
            Normalizer.from_state_dict(raw["action_normalizer"]),
        )
        model.net.load_state_dict(raw["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path} is an incomplete inverse-dynamics file: {e}") from None
    return model.to(loaded.device).eval().requires_grad_(False)
