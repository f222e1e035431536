"""Train Diffuser's value function V(x_t, t) for a trained diffusion model, and load it back.

The value net regresses the discounted return from a window's first step on noised windows
x_t (the diffusion model's own schedule, start state inpainted as in its training). Its
checkpoint is one file (atomic write, `torch.load(weights_only=True)`) that records a
fingerprint of the diffusion model it matches (normalizer statistics + plan layout + noise
schedule); `load_value` refuses a file made for another model.

    {"format": "diffplan-value", "version": 1, "fingerprint": str, "net": {...ValueNet args},
     "state_dict": ..., "return_range": [lo, hi], "discount": float,
     "termination_penalty": float, "step": int, "diffusion_checkpoint": str, "meta": {...}}
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import torch
from torch import nn

from diffplan.checkpoint import (
    LoadedModel,
    first_non_finite,
    load_checkpoint,
    read_part,
    save_checkpoint,
)
from diffplan.data.windows import TrajectoryWindows
from diffplan.diffusion import Diffusion
from diffplan.distributed import resolve_device
from diffplan.errors import CheckpointError, ConfigError, TrainingDiverged
from diffplan.networks import ValueNet
from diffplan.normalizer import Normalizer
from diffplan.preflight import check_value_paths, remove_stale_temp_files
from diffplan.spec import TrajectorySpec

VALUE_FORMAT = "diffplan-value"
VALUE_VERSION = 1


def model_fingerprint(spec: TrajectorySpec, normalizer: Normalizer, diffusion: Diffusion) -> str:
    """A short hash of what a value net depends on: the plan layout, the normalizer statistics
    and the noise schedule (not the denoiser weights: V only ever sees noised data)."""
    h = hashlib.sha256()
    h.update(json.dumps(spec.to_dict(), sort_keys=True).encode())
    h.update(normalizer.kind.encode())
    for key in sorted(normalizer.stats):
        h.update(key.encode())
        h.update(normalizer.stats[key].to(torch.float64).numpy().tobytes())
    # Rounded, so that the same schedule built on another device hashes the same.
    abar = diffusion.alphas_cumprod.detach().double().cpu()
    h.update(torch.round(abar * 1e6).long().numpy().tobytes())
    return h.hexdigest()[:16]


class ValueFunction(nn.Module):
    """A trained `ValueNet` plus the return range its output is scaled by.

    forward(x_t (B, H, D) normalized, t (B,)) -> (B,) value on the [0, 1] scale of
    `return_range` (the training windows' min and max discounted return);
    `to_returns` converts that to return units.
    """

    def __init__(
        self, net: nn.Module, return_range: tuple[float, float], discount: float | None = None
    ):
        super().__init__()
        self.net = net
        self.return_range = (float(return_range[0]), float(return_range[1]))
        self.discount = discount

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(x, t)

    def to_returns(self, value: torch.Tensor) -> torch.Tensor:
        lo, hi = self.return_range
        return lo + value * (hi - lo)

    def from_returns(self, returns: torch.Tensor) -> torch.Tensor:
        lo, hi = self.return_range
        return (returns - lo) / max(hi - lo, 1e-8)


def train_value(
    diffusion_checkpoint: str | os.PathLike,
    out_path: str | os.PathLike,
    steps: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    seed: int = 0,
    discount: float | None = None,
    termination_penalty: float | None = None,
    device: str = "cpu",
    progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Train a value net for the model in `diffusion_checkpoint`; write it to `out_path`.

    Defaults: steps/batch_size/lr and the network size from the checkpoint's `config.value`,
    discount and termination_penalty from its `config.data`. Returns `out_path`.
    Refused before any training (`check_value_paths`): `out_path` equal to the checkpoint, a
    directory, or an existing file unless `overwrite`.
    """
    from diffplan.trainer import load_episodes  # the same data the diffusion model saw

    check_value_paths(diffusion_checkpoint, out_path, overwrite)
    for name, value in (("steps", steps), ("batch_size", batch_size)):
        if value is not None and value < 1:
            raise ConfigError(f"value training {name} must be >= 1, got {value}")
    if lr is not None and not lr > 0:
        raise ConfigError(f"value training lr must be > 0, got {lr}")
    dev = resolve_device(device)
    loaded = load_checkpoint(diffusion_checkpoint, device=dev)
    config, spec = loaded.config, loaded.spec
    vc = config.value
    steps = vc.steps if steps is None else steps
    batch_size = vc.batch_size if batch_size is None else batch_size
    lr = vc.lr if lr is None else lr
    levels = len(vc.dim_mults)
    if spec.horizon % 2 ** (levels - 1):
        raise ConfigError(
            f"config key 'value.dim_mults' {vc.dim_mults} of {diffusion_checkpoint} does not fit "
            f"the plan: horizon {spec.horizon} must be divisible by {2 ** (levels - 1)}; use "
            f"fewer levels (retrain with e.g. value.dim_mults=[1,2])"
        )
    discount = config.data.discount if discount is None else discount
    if termination_penalty is None:
        termination_penalty = config.data.termination_penalty

    windows = TrajectoryWindows(
        load_episodes(config),
        spec,
        loaded.normalizer,
        end_policy=config.data.end_policy,
        discount=discount,
        termination_penalty=termination_penalty,
        conditions=("returns",),
        return_horizon=config.data.return_horizon,
    )
    lo, hi = windows.return_range
    diffusion = loaded.diffusion

    torch.manual_seed(seed)
    net_args = {
        "transition_dim": spec.transition_dim,
        "horizon": spec.horizon,
        "dim": vc.dim,
        "dim_mults": list(vc.dim_mults),
        "kernel_size": vc.kernel_size,
    }
    net = _build_net(net_args).to(dev)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    noise_gen = torch.Generator(device=dev).manual_seed(seed + 1)

    from tqdm.auto import tqdm

    losses = []
    for _ in tqdm(range(steps), disable=not progress, desc="value", unit="step"):
        batch = windows.sample(batch_size, generator=gen)
        x0 = batch["x"].to(dev)
        target = ((batch["returns"][:, 0] - lo) / max(hi - lo, 1e-8)).to(dev)
        t = torch.randint(0, diffusion.n_timesteps, (len(x0),), device=dev, generator=noise_gen)
        noise = torch.randn(x0.shape, device=dev, generator=noise_gen)
        # Noised like the sampler sees plans: known start state(s) clean, the rest noisy.
        x_t = torch.where(diffusion.train_condition_mask, x0, diffusion.q_sample(x0, t, noise))
        loss = nn.functional.mse_loss(net(x_t, t), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())

    tail = torch.stack(losses[-100:]).mean().item() if losses else float("nan")
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    if (losses and not math.isfinite(tail)) or first_non_finite(state):
        raise TrainingDiverged(
            f"value training diverged (final loss {tail}, or NaN/inf weights); lower --lr / "
            f"value.lr (now {lr:g}); {out_path} was not written"
        )
    remove_stale_temp_files([out_path])  # of an earlier, killed save
    payload = {
        "format": VALUE_FORMAT,
        "version": VALUE_VERSION,
        "fingerprint": model_fingerprint(spec, loaded.normalizer, diffusion),
        "net": net_args,
        "state_dict": state,
        "return_range": [float(lo), float(hi)],
        "discount": float(discount),
        "termination_penalty": float(termination_penalty),
        "step": int(steps),
        "diffusion_checkpoint": str(diffusion_checkpoint),
        "meta": {"diffusion_step": loaded.step, "final_loss": tail, "seed": seed},
    }
    return save_checkpoint(payload, out_path)


def _build_net(args: dict) -> ValueNet:
    return ValueNet(
        int(args["transition_dim"]),
        int(args["horizon"]),
        dim=int(args["dim"]),
        dim_mults=tuple(int(m) for m in args["dim_mults"]),
        kernel_size=int(args["kernel_size"]),
    )


def load_value(path: str | os.PathLike, loaded_diffusion: LoadedModel) -> ValueFunction:
    """The value function in `path` (eval mode, frozen, on the model's device), checked
    against the diffusion model it will guide.

    A file trained for another model (other normalizer, layout or schedule) is a
    `CheckpointError`, as is anything that is not a diffplan value checkpoint.
    """
    fix = "retrain it with `diffplan train-value`"
    raw = read_part(path, VALUE_FORMAT, VALUE_VERSION, "value checkpoint", fix)
    expected = model_fingerprint(
        loaded_diffusion.spec, loaded_diffusion.normalizer, loaded_diffusion.diffusion
    )
    if raw.get("fingerprint") != expected:
        raise CheckpointError(
            f"{path} was trained for another diffusion model (fingerprint "
            f"{raw.get('fingerprint')} != {expected}: normalizer, plan layout or schedule differ;"
            f" made from {raw.get('diffusion_checkpoint')}); {fix}"
        )
    try:
        net = _build_net(raw["net"])
        net.load_state_dict(raw["state_dict"])
        rr = raw["return_range"]
        value = ValueFunction(net, (float(rr[0]), float(rr[1])), float(raw["discount"]))
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{path} is an incomplete value checkpoint: {first}") from None
    value.to(loaded_diffusion.device).eval().requires_grad_(False)
    return value
