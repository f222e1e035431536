"""An in-support critic for ranking plans: IQL's Q(s, a) and V(s), trained on the dataset.

Diffuser's value net regresses the behaviour's own Monte-Carlo return, so ranking by it
prefers what the data did on average. IQL's critic (Kostrikov et al., 2022) estimates the best
return the data supports: V(s) is an upper expectile of Q(s, a) over the data's actions, and
Q(s, a) = r + discount * V(s') by TD, so it never queries an action the data did not take.
IDQL (Hansen-Estruch et al., 2023) and Diffusion Veteran (Lu et al., 2025) rank a diffusion
model's samples by such a critic instead of steering them by gradients; `guides.CriticRanking`
does that with a plan's first (state, action).

The critic depends on the data only (not on the denoiser), so it can train beside the
diffusion model; its file records the dataset and dims it was trained on, and
`load_critic` refuses it for a model of other data.

    {"format": "diffplan-critic", "version": 1, "dataset": str, "obs_dim": int,
     "act_dim": int, "hidden": [int, ...], "state_dict": ..., "settings": {...},
     "reward_scale": float, "step": int, "meta": {...}}
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict
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
from diffplan.config import CriticConfig, config_from_dict
from diffplan.data.episodes import Episodes
from diffplan.errors import CheckpointError, ConfigError, TrainingDiverged
from diffplan.preflight import check_value_paths, remove_stale_temp_files

CRITIC_FORMAT = "diffplan-critic"
CRITIC_VERSION = 1


def _mlp(inputs: int, hidden: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(inputs, width), nn.ReLU()]
        inputs = width
    return nn.Sequential(*layers, nn.Linear(inputs, 1))


class Critic(nn.Module):
    """Twin Q(s, a) and V(s) over standardized inputs; env units in, scaled return out.

    q(obs (B, obs_dim), act (B, act_dim)) -> (B,) the smaller of the twins;
    v(obs) -> (B,). Returns are in the critic's reward units (the data's rewards times
    `reward_scale`): ranking needs only their order.
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden: list[int], stats: dict | None = None):
        super().__init__()
        self.obs_dim, self.act_dim, self.hidden = obs_dim, act_dim, list(hidden)
        self.q1 = _mlp(obs_dim + act_dim, self.hidden)
        self.q2 = _mlp(obs_dim + act_dim, self.hidden)
        self.v_net = _mlp(obs_dim, self.hidden)
        stats = stats or {}
        for name, dim in (("obs_mean", obs_dim), ("obs_std", obs_dim),
                          ("act_mean", act_dim), ("act_std", act_dim)):  # fmt: skip
            default = torch.zeros(dim) if name.endswith("mean") else torch.ones(dim)
            self.register_buffer(name, torch.as_tensor(stats.get(name, default)).float())

    def _obs(self, obs: torch.Tensor) -> torch.Tensor:
        return (obs - self.obs_mean) / self.obs_std

    def _sa(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        return torch.cat([self._obs(obs), (act - self.act_mean) / self.act_std], dim=-1)

    def q_pair(self, obs: torch.Tensor, act: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sa = self._sa(obs, act)
        return self.q1(sa).squeeze(-1), self.q2(sa).squeeze(-1)

    def q(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        return torch.minimum(*self.q_pair(obs, act))

    def v(self, obs: torch.Tensor) -> torch.Tensor:
        return self.v_net(self._obs(obs)).squeeze(-1)


def transitions(episodes: Episodes) -> dict[str, np.ndarray]:
    """(s, a, r, s', done) of every step that has a next state: a truncated episode's last
    step has none (dropped); a terminated one's needs none (done, s' = s)."""
    n = episodes.n_steps
    nxt = np.arange(1, n + 1)
    last = episodes.episode_starts + episodes.lengths - 1
    nxt[last] = last  # never read past an episode: its last step points at itself
    done = episodes.terminations.copy()
    keep = np.ones(n, bool)
    keep[last] = episodes.terminations[last]
    idx = np.flatnonzero(keep)
    return {
        "obs": episodes.observations[idx],
        "act": episodes.actions[idx],
        "rew": episodes.rewards[idx],
        "next_obs": episodes.observations[nxt[idx]],
        "done": done[idx].astype(np.float32),
    }


def reward_scale(episodes: Episodes) -> float:
    """IQL's locomotion scaling: rewards x 1000 / (best - worst episode return), so the
    critic's targets have the same size on every dataset."""
    returns = episodes.episode_returns()
    spread = float(returns.max() - returns.min()) if len(returns) > 1 else 0.0
    return 1000.0 / spread if spread > 1e-6 else 1.0


def expectile_loss(diff: torch.Tensor, expectile: float) -> torch.Tensor:
    """Asymmetric squared error: weight `expectile` above 0, 1 - expectile below."""
    weight = torch.where(diff > 0, expectile, 1.0 - expectile)
    return (weight * diff.square()).mean()


def train_critic(
    diffusion_checkpoint: str | os.PathLike,
    out_path: str | os.PathLike,
    steps: int | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
    overwrite: bool = False,
    settings: CriticConfig | None = None,
    overrides: list[str] = (),
) -> Path:
    """Train IQL's critic on the data of `diffusion_checkpoint`'s config; write `out_path`.

    Settings (expectile, discount, network, steps, ...) come from the checkpoint's `critic:`
    section unless `settings` is given, with `critic.key=value` `overrides` applied;
    `steps` / `batch_size` override them. Refused before
    any training: `out_path` equal to the checkpoint, a directory, or an existing file unless
    `overwrite`."""
    from diffplan.distributed import resolve_device
    from diffplan.trainer import load_episodes

    check_value_paths(diffusion_checkpoint, out_path, overwrite)
    loaded = load_checkpoint(diffusion_checkpoint, device="cpu")
    if settings is None:
        settings = config_from_dict(
            loaded.config.to_dict(), "the command-line overrides", list(overrides)
        ).critic
    cc = settings
    steps = cc.steps if steps is None else steps
    batch_size = cc.batch_size if batch_size is None else batch_size
    if steps < 1 or batch_size < 1:
        raise ConfigError(f"critic steps and batch_size must be >= 1, got {steps}, {batch_size}")
    dev = resolve_device(device)

    episodes = load_episodes(loaded.config, keep_actions=True)
    critic, scale, tail = fit_critic(episodes, cc, steps, batch_size, seed, dev, progress)
    state = {k: v.detach().cpu() for k, v in critic.state_dict().items()}
    if not all(math.isfinite(x) for x in tail) or first_non_finite(state):
        raise TrainingDiverged(
            f"critic training diverged (final losses {tail}); lower critic.lr (now {cc.lr:g});"
            f" {out_path} was not written"
        )
    remove_stale_temp_files([out_path])  # of an earlier, killed save
    payload = {
        "format": CRITIC_FORMAT,
        "version": CRITIC_VERSION,
        "dataset": str(loaded.config.data.dataset),
        "obs_dim": episodes.obs_dim,
        "act_dim": episodes.act_dim,
        "hidden": list(cc.hidden),
        "state_dict": state,
        "settings": asdict(cc),
        "reward_scale": scale,
        "step": int(steps),
        "meta": {"q_loss": tail[0], "v_loss": tail[1], "seed": seed,
                 "diffusion_checkpoint": str(diffusion_checkpoint)},
    }  # fmt: skip
    return save_checkpoint(payload, out_path)


def fit_critic(
    episodes: Episodes,
    cc: CriticConfig,
    steps: int,
    batch_size: int,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> tuple[Critic, float, list[float]]:
    """IQL's critic on `episodes`: (critic, reward scale, [final Q loss, final V loss])."""
    from tqdm.auto import tqdm

    dev = torch.device(device)
    if episodes.act_dim == 0:
        raise ConfigError("the dataset has no actions: a critic needs them")
    data = transitions(episodes)
    scale = reward_scale(episodes)
    stats = {
        "obs_mean": data["obs"].mean(0), "obs_std": np.maximum(data["obs"].std(0), 1e-3),
        "act_mean": data["act"].mean(0), "act_std": np.maximum(data["act"].std(0), 1e-3),
    }  # fmt: skip
    tensors = {k: torch.as_tensor(v, device=dev) for k, v in data.items()}
    tensors["rew"] = tensors["rew"] * scale

    torch.manual_seed(seed)
    critic = Critic(episodes.obs_dim, episodes.act_dim, list(cc.hidden), stats).to(dev)
    target = Critic(episodes.obs_dim, episodes.act_dim, list(cc.hidden), stats).to(dev)
    target.load_state_dict(critic.state_dict())
    target.requires_grad_(False)
    q_params = list(critic.q1.parameters()) + list(critic.q2.parameters())
    q_opt = torch.optim.Adam(q_params, lr=cc.lr)
    v_opt = torch.optim.Adam(critic.v_net.parameters(), lr=cc.lr)
    gen = torch.Generator().manual_seed(seed)
    n = len(tensors["obs"])

    losses: list[torch.Tensor] = []
    bar = tqdm(range(steps), disable=not progress, desc="critic", unit="step")
    for _ in bar:
        i = torch.randint(0, n, (batch_size,), generator=gen).to(dev)
        obs, act, nxt = tensors["obs"][i], tensors["act"][i], tensors["next_obs"][i]
        # V: an upper expectile of the target Q over the data's actions (in-support max).
        with torch.no_grad():
            q_target = target.q(obs, act)
        v_loss = expectile_loss(q_target - critic.v(obs), cc.expectile)
        v_opt.zero_grad(set_to_none=True)
        v_loss.backward()
        v_opt.step()
        # Q: one-step TD towards r + discount * V(s'), V being the expectile just fitted.
        with torch.no_grad():
            td = tensors["rew"][i] + cc.discount * (1 - tensors["done"][i]) * critic.v(nxt)
        q1, q2 = critic.q_pair(obs, act)
        q_loss = (q1 - td).square().mean() + (q2 - td).square().mean()
        q_opt.zero_grad(set_to_none=True)
        q_loss.backward()
        q_opt.step()
        with torch.no_grad():
            for p, tp in zip(critic.parameters(), target.parameters(), strict=True):
                tp.lerp_(p, cc.target_update)
        losses.append(torch.stack([q_loss.detach(), v_loss.detach()]))
        if progress and len(losses) % 500 == 0:
            q_l, v_l = torch.stack(losses[-500:]).mean(0).tolist()
            bar.set_postfix(q_loss=f"{q_l:.3g}", v_loss=f"{v_l:.3g}")
    tail = torch.stack(losses[-100:]).mean(0).tolist()
    return critic.eval(), scale, tail


def load_critic(path: str | os.PathLike, loaded_diffusion: LoadedModel) -> Critic:
    """The critic in `path` (eval mode, frozen, on the model's device), checked against the
    diffusion model whose plans it will rank: same dataset, same observation and action dims.
    """
    fix = f"train one with `diffplan train-critic --checkpoint {loaded_diffusion.path}`"
    raw = read_part(path, CRITIC_FORMAT, CRITIC_VERSION, "critic", fix)
    spec, data = loaded_diffusion.spec, loaded_diffusion.config.data
    dims = (raw.get("obs_dim"), raw.get("act_dim"))
    if dims != (spec.obs_dim, spec.act_dim) or raw.get("dataset") != str(data.dataset):
        raise CheckpointError(
            f"{path} was trained on {raw.get('dataset')} (obs/act dims {dims}), but "
            f"{loaded_diffusion.path} plans over {data.dataset} ({spec.obs_dim}, "
            f"{spec.act_dim}); {fix}"
        )
    try:
        critic = Critic(int(raw["obs_dim"]), int(raw["act_dim"]), list(raw["hidden"]))
        critic.load_state_dict(raw["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{path} is an incomplete critic: {first}") from None
    return critic.to(loaded_diffusion.device).eval().requires_grad_(False)
