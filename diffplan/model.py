"""Build the trajectory diffusion model (the `model.type` backbone inside a `Diffusion`) from a
`Config`."""

from __future__ import annotations

from diffplan.backbones import backbone_class
from diffplan.config import Config
from diffplan.diffusion import Diffusion
from diffplan.spec import TrajectorySpec


def build_spec(config: Config, obs_dim: int, act_dim: int) -> TrajectorySpec:
    """The plan layout for data of these dimensions and the config's horizon/stride."""
    return TrajectorySpec(
        obs_dim=obs_dim, act_dim=act_dim, horizon=config.model.horizon, stride=config.model.stride
    )


def build_diffusion(config: Config, spec: TrajectorySpec, cond_dim: int = 0) -> Diffusion:
    """A fresh (randomly initialised) model; `cond_dim` > 0 adds a conditioning input (returns)."""
    net = backbone_class(config.model.type).from_config(config.model, spec.transition_dim, cond_dim)
    d = config.diffusion
    return Diffusion(
        net,
        spec,
        n_timesteps=d.n_timesteps,
        schedule=d.schedule,
        prediction=d.prediction,
        action_weight=d.action_weight,
        loss_discount=d.loss_discount,
        dim_weights=d.dim_weights,
        condition_steps=tuple(d.condition_steps),
        clip_denoised=d.clip_denoised,
        cond_dropout=d.cond_dropout,
    )
