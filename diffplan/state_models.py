"""Learned functions of one state, for planners that are not told the goal.

Two kinds, both a small MLP on the observation trained on the same episodes as a diffusion
model (its config's data section, hindsight relabelling included):

    reward        r(s'): the reward of arriving at s' (row t's reward paired with row t+1's
                  observation inside each episode; an episode's last step has no stored
                  successor and is left out). Goal-reaching rewards (PointMaze's dense
                  exp(-distance)) depend on the state reached only, so a planner can read
                  where in a plan the reward peaks (`guides.HoldAtBest`); a value net scores
                  whole windows and cannot say that.
    start-return  V_tau(s): an upper expectile (tau, default 0.9) of the discounted window
                  return of the windows that start at s (the model's own return targets), i.e.
                  the return the data achieves from s when it goes well: a start-dependent
                  target for return conditioning (`ReturnConditioning(target=model)`), where a
                  fixed target asks far-away starts for returns no window from there has.

Its checkpoint is one file (atomic write, `torch.load(weights_only=True)`):

    {"format": "diffplan-state-model", "version": 1, "kind": str, "obs_dim": int,
     "hidden": [int, ...], "expectile": float, "state_dict": ..., "data": {...config data},
     "step": int, "diffusion_checkpoint": str, "meta": {...}}
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from diffplan.checkpoint import (
    LoadedModel,
    first_non_finite,
    load_checkpoint,
    read_part,
    save_checkpoint,
)
from diffplan.distributed import resolve_device
from diffplan.errors import CheckpointError, ConfigError, TrainingDiverged
from diffplan.preflight import check_value_paths, remove_stale_temp_files

STATE_MODEL_FORMAT = "diffplan-state-model"
STATE_MODEL_VERSION = 1
KINDS = ("reward", "start-return")
DEFAULT_EXPECTILE = {"reward": 0.5, "start-return": 0.9}


class StateModel(nn.Module):
    """f(observation) in target units (reward or return); observations (..., obs_dim), env units.

    Input and output are standardized with the training data's statistics, kept as buffers so
    that the checkpoint holds everything, as is the targets' range (`target_range`).
    """

    def __init__(self, obs_dim: int, hidden: tuple[int, ...] = (128, 128), kind: str = "reward"):
        super().__init__()
        layers: list[nn.Module] = []
        width = obs_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.Mish()]
            width = h
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)
        self.kind, self.obs_dim, self.hidden = kind, obs_dim, tuple(hidden)
        self.register_buffer("obs_mean", torch.zeros(obs_dim))
        self.register_buffer("obs_std", torch.ones(obs_dim))
        self.register_buffer("target_mean", torch.zeros(()))
        self.register_buffer("target_std", torch.ones(()))
        self.register_buffer("target_min", torch.zeros(()))
        self.register_buffer("target_max", torch.ones(()))

    @property
    def target_range(self) -> tuple[float, float]:
        """(min, max) of the training targets: the data's rewards or window returns."""
        return float(self.target_min), float(self.target_max)

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        z = (observations - self.obs_mean) / self.obs_std
        return self.net(z).squeeze(-1) * self.target_std + self.target_mean


def training_pairs(kind: str, episodes, data) -> tuple[np.ndarray, np.ndarray]:
    """(observations (M, obs_dim), targets (M,)) for `kind` from episodes and a DataConfig."""
    if kind == "reward":
        last = episodes.episode_starts + episodes.lengths - 1
        keep = np.ones(len(episodes.rewards), dtype=bool)
        keep[last] = False
        rows = np.flatnonzero(keep)
        return episodes.observations[rows + 1], episodes.rewards[rows]
    if kind == "start-return":
        from diffplan.data.windows import returns_to_go

        rtg = returns_to_go(episodes, data.discount, data.termination_penalty, data.return_horizon)
        return episodes.observations, rtg
    raise ConfigError(f"state model kind '{kind}' is unknown; choose from {', '.join(KINDS)}")


def train_state_model(
    diffusion_checkpoint: str | os.PathLike,
    out_path: str | os.PathLike,
    kind: str = "reward",
    expectile: float | None = None,
    steps: int = 20000,
    batch_size: int = 256,
    lr: float = 1e-3,
    hidden: tuple[int, ...] = (128, 128),
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Fit a `kind` model on the data of the model in `diffusion_checkpoint`; write `out_path`.

    expectile: tau of the asymmetric squared loss |tau - 1[u < 0]| u^2 (0.5: the mean);
    default 0.5 for "reward", 0.9 for "start-return". steps: 20,000 by default; at 3,000 the
    reward of PointMaze Medium's goal cell (rare in the data) still peaked in its wall corner.
    """
    from diffplan.trainer import load_episodes  # the same (relabelled) data the model saw

    if kind not in KINDS:
        raise ConfigError(f"state model kind '{kind}' is unknown; choose from {', '.join(KINDS)}")
    expectile = DEFAULT_EXPECTILE[kind] if expectile is None else expectile
    if not 0.0 < expectile < 1.0:
        raise ConfigError(f"expectile must lie in (0, 1), got {expectile}")
    check_value_paths(diffusion_checkpoint, out_path, overwrite)
    for name, value in (("steps", steps), ("batch_size", batch_size)):
        if value < 1:
            raise ConfigError(f"state model training {name} must be >= 1, got {value}")
    if not lr > 0:
        raise ConfigError(f"state model training lr must be > 0, got {lr}")
    dev = resolve_device(device)
    loaded = load_checkpoint(diffusion_checkpoint, device=dev)
    observations, targets = training_pairs(kind, load_episodes(loaded.config), loaded.config.data)
    if len(targets) == 0:
        raise ConfigError(f"the data of {diffusion_checkpoint} has no {kind} training pair")
    model, tail = fit_state_model(
        observations, targets, kind, expectile, steps, batch_size, lr, hidden, seed, dev, progress
    )
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if not math.isfinite(tail) or first_non_finite(state):
        raise TrainingDiverged(
            f"{kind} model training diverged (final loss {tail}); lower --lr (now {lr:g}); "
            f"{out_path} was not written"
        )
    remove_stale_temp_files([out_path])
    payload = {
        "format": STATE_MODEL_FORMAT,
        "version": STATE_MODEL_VERSION,
        "kind": kind,
        "obs_dim": int(model.obs_dim),
        "hidden": [int(h) for h in hidden],
        "expectile": float(expectile),
        "state_dict": state,
        "data": loaded.config.to_dict()["data"],
        "step": int(steps),
        "diffusion_checkpoint": str(diffusion_checkpoint),
        "meta": {"final_loss_standardized": tail, "pairs": len(targets), "seed": seed},
    }
    return save_checkpoint(payload, out_path)


def fit_state_model(
    observations: np.ndarray,
    targets: np.ndarray,
    kind: str = "reward",
    expectile: float = 0.5,
    steps: int = 3000,
    batch_size: int = 256,
    lr: float = 1e-3,
    hidden: tuple[int, ...] = (128, 128),
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> tuple[StateModel, float]:
    """Fit f(observation) to targets by expectile regression; (model, mean loss of the last
    100 steps). The loss |tau - 1[u < 0]| u^2 of u = (target - f) / std(targets): tau 0.5 is the
    mean, tau near 1 the best the data reaches from a state."""
    obs = torch.as_tensor(np.asarray(observations), dtype=torch.float32)
    y = torch.as_tensor(np.asarray(targets), dtype=torch.float32).reshape(-1)
    torch.manual_seed(seed)
    model = StateModel(obs.shape[1], hidden, kind)
    model.obs_mean.copy_(obs.mean(0))
    model.obs_std.copy_(obs.std(0).clamp_min(1e-6))
    model.target_mean.copy_(y.mean())
    model.target_std.copy_(y.std().clamp_min(1e-6))
    model.target_min.copy_(y.min())
    model.target_max.copy_(y.max())
    model.to(device)
    obs, y = obs.to(device), y.to(device)
    optimizer = torch.optim.Adam(model.net.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)

    from tqdm.auto import tqdm

    losses = []
    for _ in tqdm(range(steps), disable=not progress, desc=kind, unit="step"):
        idx = torch.randint(0, len(y), (batch_size,), generator=gen).to(device)
        u = (y[idx] - model(obs[idx])) / model.target_std  # units-free learning rate
        loss = (torch.abs(expectile - (u < 0).float()) * u.square()).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    return model.eval(), torch.stack(losses[-100:]).mean().item()


def load_state_model(
    path: str | os.PathLike, loaded_diffusion: LoadedModel, kind: str | None = None
) -> StateModel:
    """The state model in `path` (eval mode, frozen, on the model's device), checked against
    the diffusion model whose plans it will serve (observation size, data) and, when given,
    against the expected `kind`."""
    fix = "make one with `diffplan train-state-model --checkpoint ... --kind ...`"
    raw = read_part(path, STATE_MODEL_FORMAT, STATE_MODEL_VERSION, "state model", fix)
    if kind is not None and raw.get("kind") != kind:
        raise CheckpointError(f"{path} is a '{raw.get('kind')}' model, not a '{kind}' one; {fix}")
    obs_dim = loaded_diffusion.spec.obs_dim
    if raw.get("obs_dim") != obs_dim:
        raise CheckpointError(
            f"{path} reads observations of size {raw.get('obs_dim')}, this model plans "
            f"obs_dim={obs_dim}; {fix}"
        )
    if raw.get("data") != loaded_diffusion.config.to_dict()["data"]:
        raise CheckpointError(
            f"{path} was trained on other data (or another reward relabelling) than this model "
            f"(it was made from {raw.get('diffusion_checkpoint')}); {fix}"
        )
    try:
        model = StateModel(obs_dim, tuple(int(h) for h in raw["hidden"]), str(raw["kind"]))
        model.load_state_dict(raw["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{path} is an incomplete state model: {first}") from None
    return model.to(loaded_diffusion.device).eval().requires_grad_(False)
