"""Train a trajectory diffusion model from a `Config`: data -> normalizer -> windows -> AdamW + EMA.

One plain function, `train`, readable top to bottom. It writes into `out_dir`: `config.yaml`,
`last.pt` (atomic, every `save_every` steps and at the end), `losses.csv` (every step) and
TensorBoard scalars. `resume=True` continues from `last.pt` with the same per-step losses as
an uninterrupted run (all randomness comes from generators whose states are checkpointed).
Under `torchrun` it trains with DDP: each rank takes its slice of the global batch and only
rank 0 writes files.

Safety: a folder with anything in it needs `resume` or `overwrite` (`diffplan.preflight`); the
config, the dataset and the model are all checked before the folder is touched, and only then
are the temp files of killed saves (and, with `overwrite`, the previous run's outputs)
removed. A NaN/inf loss, gradient or weight stops training with `TrainingDiverged` before a
checkpoint holding it is written.
"""

from __future__ import annotations

import copy
import csv
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from diffplan.checkpoint import read_checkpoint, save_checkpoint
from diffplan.config import Config, save_config, validate_config
from diffplan.data.episodes import Episodes
from diffplan.data.windows import TrajectoryWindows, fit_normalizer
from diffplan.diffusion import Diffusion
from diffplan.distributed import (
    DistInfo,
    gather_states,
    init_distributed,
    local_rank_from_env,
    replica_max_diff,
    resolve_device,
    set_cpu_threads,
    shutdown,
)
from diffplan.errors import ConfigError, TrainingDiverged
from diffplan.model import build_diffusion, build_spec
from diffplan.normalizer import Normalizer
from diffplan.preflight import check_run_dir, default_run_dir, prepare_run_dir
from diffplan.runlock import RunLock

N_EXAMPLES = 64  # training windows stored in the checkpoint (conditions for `diffplan sample`)
STATE_JUMP_QUANTILE = 0.999  # the data's "largest" step between planned states, robust to outliers
CSV_FIELDS = ("step", "loss", "lr", "grad_norm")


def load_episodes(config: Config, keep_actions: bool = False) -> Episodes:
    """The dataset named by `config.data` (minari | d4rl | synthetic), with its rewards
    relabelled for `data.reward_goal` when set (`diffplan.data.relabel`), and its actions
    dropped for a states-only model (`model.states_only`) unless `keep_actions`."""
    episodes = _load_source(config)
    if config.model.states_only and not keep_actions:
        episodes = episodes.states_only()
    if config.data.reward_goal is not None:
        from diffplan.data.relabel import relabel_rewards

        episodes = relabel_rewards(episodes, config.data.reward_goal, config.data.reward_type)
    return episodes


def _load_source(config: Config) -> Episodes:
    data = config.data
    if data.source == "synthetic":
        from diffplan.data.synthetic import make_synthetic

        return make_synthetic(data.dataset or "two_mode", n_episodes=data.synthetic_episodes)
    if not data.dataset:
        raise ConfigError(f"data.dataset is empty; name the {data.source} dataset to train on")
    if data.source == "minari":
        from diffplan.data.minari_source import load_minari

        return load_minari(data.dataset, root=data.root, goal_info_key=data.goal_info_key)
    if data.source == "d4rl":
        from diffplan.data.d4rl_source import load_d4rl_hdf5

        return load_d4rl_hdf5(data.dataset)
    raise ConfigError(f"unknown data.source '{data.source}'; use minari, d4rl or synthetic")


def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model (decay 0 copies the weights)."""
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters(), strict=True):
            e.lerp_(p, 1.0 - decay)


class _LossModule(nn.Module):
    """Puts `Diffusion.loss` behind `forward`, which is what DDP wraps and synchronises."""

    def __init__(self, diffusion: Diffusion):
        super().__init__()
        self.diffusion = diffusion

    def forward(self, x0, cond, generator):
        return self.diffusion.loss(x0, cond, generator=generator)


def _check_resumable(stored: dict, config: Config, path: Path) -> None:
    """Only `train.*` and the run name may change on resume; the model and data must not."""
    current = config.to_dict()
    for section in ("data", "model", "diffusion"):
        for key, value in current[section].items():
            if stored.get(section, {}).get(key) != value:
                raise ConfigError(
                    f"cannot resume from {path}: {section}.{key} is {value!r} now but "
                    f"{stored.get(section, {}).get(key)!r} in the checkpoint"
                )


def _examples(windows: TrajectoryWindows, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed + 7)
    idx = torch.randint(len(windows), (min(N_EXAMPLES, len(windows)),), generator=gen)
    batch = windows.batch(idx)
    return {"x": batch["x"].clone(), "returns": batch["returns"].clone()}


def _state_jump_stats(episodes, stride: int) -> dict:
    """Per observation dim, how far the data moves between consecutive planned states (env
    units): what a plausible plan may do (`guides.StepLimit`)."""
    jumps = episodes.state_jumps(stride)
    if len(jumps) == 0:
        return {}
    return {
        "stride": stride,
        "quantile": STATE_JUMP_QUANTILE,
        "limit": np.quantile(jumps, STATE_JUMP_QUANTILE, axis=0).astype(float).tolist(),
        "max": jumps.max(axis=0).astype(float).tolist(),
    }


def _rewrite_csv(path: Path, upto_step: int) -> None:
    """Keep the complete rows of steps <= upto_step (a crash after the last save may have left
    more, or half a row); rewritten atomically."""
    if not path.is_file():
        return

    def complete(row: dict) -> bool:
        return all(row.get(k) not in (None, "") for k in CSV_FIELDS) and row["step"].isdigit()

    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if complete(r) and int(r["step"]) <= upto_step]
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def _diverged(what: str, step: int, config: Config, saved: tuple[Path, int] | None) -> str:
    tc = config.train
    kept = f"{saved[0]} still holds step {saved[1]}" if saved else "no checkpoint was written"
    return (
        f"training diverged at step {step}: {what}; lower train.lr (now {tc.lr:g}) or add "
        f"train.warmup_steps / train.grad_clip, and check the data ({kept})"
    )


def train(
    config: Config,
    out_dir: str | os.PathLike | None = None,
    resume: bool = False,
    device: str | None = None,
    progress: bool = True,
    overwrite: bool = False,
    check_data: Callable[[Episodes, str], None] | None = None,
) -> Path:
    """Train for `config.train.steps` steps in total; returns the path of the final checkpoint.

    check_data(episodes, dataset name): called once the data is loaded, before anything is
    written (the CLI passes its task's check: the data must fit the env it is evaluated on).

    device: cpu | cuda | auto (default: config.train.device). Under torchrun, each process
    uses its LOCAL_RANK's GPU (or the CPU with the gloo backend).
    out_dir (default runs/<config.name>) must be new or empty unless `resume` (continue its
    last.pt) or `overwrite` (replace the previous run's files once every input checks out).
    """
    validate_config(config)  # a Config built or changed in code gets the checks a file gets
    out = Path(out_dir) if out_dir is not None else default_run_dir(config.name)
    lock = None
    if int(os.environ.get("RANK", "0")) == 0:  # only rank 0 writes there (and would race)
        check_run_dir(out, resume, overwrite)
        # One writer per run folder; checked again under the lock, which another train may
        # have taken between the two checks.
        lock = RunLock(out, "train").acquire()
    try:
        if lock is not None:
            check_run_dir(out, resume, overwrite)
        dev = resolve_device(device or config.train.device, local_rank_from_env())
        info = init_distributed(dev)
        try:
            return _train(config, out, resume, dev, info, progress, overwrite, check_data)
        finally:
            shutdown(info)
    finally:
        if lock is not None:
            lock.release()


def _train(
    config: Config,
    out: Path,
    resume: bool,
    dev: torch.device,
    info: DistInfo,
    progress: bool,
    overwrite: bool,
    check_data: Callable[[Episodes, str], None] | None = None,
) -> Path:
    tc = config.train
    if tc.batch_size % info.world_size:
        raise ConfigError(
            f"train.batch_size {tc.batch_size} is the global batch and must divide evenly over "
            f"{info.world_size} processes"
        )
    local_batch = tc.batch_size // info.world_size
    if dev.type == "cpu":
        # Processes share the cores; more threads than cores makes everyone slower.
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", info.world_size))
        set_cpu_threads(tc.threads, local_world if info.enabled else 1)
    ckpt_path = out / "last.pt"
    raw = read_checkpoint(ckpt_path) if resume else None
    if raw is not None:
        _check_resumable(raw["config"], config, ckpt_path)
        done = int(raw["step"])
        if done > tc.steps:
            raise ConfigError(
                f"cannot resume {ckpt_path} at step {done} to train.steps={tc.steps}: resuming "
                f"never goes back; pass a larger train.steps (e.g. train.steps={2 * done}) or "
                "start a new run in another --out (nothing was changed)"
            )
        if done == tc.steps:  # nothing to train: leave the run exactly as it is
            return ckpt_path

    # ----- data: episodes -> normalizer -> windows ----------------------------------------
    episodes = load_episodes(config)
    if check_data is not None:
        check_data(episodes, str(config.data.dataset))
    normalizer = (
        Normalizer.from_state_dict(raw["normalizer"])
        if raw is not None
        else fit_normalizer(episodes, config.data.normalizer)
    )
    spec = build_spec(config, episodes.obs_dim, episodes.act_dim)
    windows = TrajectoryWindows(
        episodes,
        spec,
        normalizer,
        end_policy=config.data.end_policy,
        discount=config.data.discount,
        termination_penalty=config.data.termination_penalty,
        conditions=("returns",),
        return_horizon=config.data.return_horizon,
    )
    return_range = None
    if config.model.return_conditioning:
        return_range = tuple(raw["return_range"]) if raw is not None else windows.return_range
    cond_dim = 1 if return_range is not None else 0

    # ----- model, EMA copy, optimizer, generators -----------------------------------------
    torch.manual_seed(tc.seed)  # the same initial weights on every rank (DDP also broadcasts)
    diffusion = build_diffusion(config, spec, cond_dim).to(dev)
    ema = copy.deepcopy(diffusion).requires_grad_(False)
    optimizer = torch.optim.AdamW(diffusion.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    # Every rank draws the same global batch indices and keeps its own slice of them.
    batch_gen = torch.Generator().manual_seed(tc.seed)
    # Diffusion noise and timesteps: a different stream per rank.
    noise_gen = torch.Generator(device=dev).manual_seed(tc.seed * 1000 + 1 + info.rank)
    step = 0
    examples = None
    if raw is not None:
        diffusion.load_state_dict(raw["model"])
        ema.load_state_dict(raw["ema"])
        optimizer.load_state_dict(raw["optimizer"])
        step = int(raw["step"])
        examples = raw.get("examples")
        rng = raw["rng"]
        torch.set_rng_state(rng["torch"])
        batch_gen.set_state(rng["batch"])
        noise_states = rng["noise"]
        if len(noise_states) == info.world_size:
            noise_gen.set_state(noise_states[info.rank])
        else:  # a different number of processes: fresh, still distinct, noise streams
            noise_gen.manual_seed(tc.seed * 1000 + 1 + info.rank + 7919 * step)
    if examples is None:
        examples = _examples(windows, tc.seed)
    saved = (ckpt_path, step) if raw is not None else None  # the last checkpoint on disk
    state_jumps = _state_jump_stats(episodes, spec.stride)

    # ----- every input checked out: only now touch the run folder --------------------------
    if info.is_main:
        prepare_run_dir(out, overwrite=overwrite and not resume)

    loss_module: nn.Module = _LossModule(diffusion)
    if info.enabled:
        loss_module = nn.parallel.DistributedDataParallel(
            loss_module,
            device_ids=[dev] if dev.type == "cuda" else None,
            broadcast_buffers=False,  # the schedule buffers are constants
        )

    def make_payload() -> dict:
        noise_states = gather_states(noise_gen.get_state(), info)  # collective: all ranks
        rng = {
            "torch": torch.get_rng_state(),
            "batch": batch_gen.get_state(),
            "noise": noise_states,
        }
        return {
            "config": config.to_dict(),
            "spec": spec.to_dict(),
            "normalizer": normalizer.state_dict(),
            "return_range": None if return_range is None else [float(v) for v in return_range],
            "cond_dim": cond_dim,
            "step": step,
            "ema": {k: v.detach().cpu() for k, v in ema.state_dict().items()},
            "model": {k: v.detach().cpu() for k, v in diffusion.state_dict().items()},
            "optimizer": _to_cpu(optimizer.state_dict()),
            "rng": rng,
            "examples": examples,
            "meta": {
                "torch": str(torch.__version__),
                "device": str(dev),
                "world_size": info.world_size,
                "dataset": {k: float(v) for k, v in episodes.summary().items()},
                "state_jumps": state_jumps,
                "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            },
        }

    # ----- logging (rank 0 only) -----------------------------------------------------------
    writer = csv_file = csv_writer = bar = None
    if info.is_main:
        from torch.utils.tensorboard import SummaryWriter  # slow import: only when training
        from tqdm.auto import tqdm

        save_config(config, out / "config.yaml")
        csv_path = out / "losses.csv"
        if resume:
            _rewrite_csv(csv_path, step)
        new_csv = not csv_path.is_file()
        csv_file = open(csv_path, "a", newline="")
        csv_writer = csv.writer(csv_file)
        if new_csv:
            csv_writer.writerow(CSV_FIELDS)
        writer = SummaryWriter(log_dir=str(out))
        bar = tqdm(
            total=tc.steps, initial=step, disable=not progress, desc=config.name, unit="step"
        )

    pending: list[tuple[int, torch.Tensor, float, torch.Tensor]] = []  # per-step, not yet logged
    interval_start, interval_steps = time.perf_counter(), 0

    def flush_logs() -> None:
        nonlocal interval_start, interval_steps
        if not pending:
            return
        losses = mean_of_ranks(torch.stack([p[1] for p in pending]))  # one sync per interval
        grad_norms = torch.stack([p[3] for p in pending]).tolist()
        finite = [
            math.isfinite(loss) and math.isfinite(gn)
            for loss, gn in zip(losses.tolist(), grad_norms, strict=True)
        ]
        if not all(finite):  # keep the good steps' rows, then stop: nothing non-finite is saved
            i = finite.index(False)
            if info.is_main:
                rows = zip(pending[:i], losses.tolist()[:i], grad_norms[:i], strict=True)
                for (s, _, lr, _), loss, gn in rows:
                    csv_writer.writerow([s, repr(loss), repr(lr), repr(gn)])
                csv_file.flush()
            what = f"the loss is {float(losses[i])} (gradient norm {grad_norms[i]})"
            raise TrainingDiverged(_diverged(what, pending[i][0], config, saved))
        if info.is_main:
            elapsed = max(time.perf_counter() - interval_start, 1e-9)
            for (s, _, lr, _), loss, gn in zip(pending, losses.tolist(), grad_norms, strict=True):
                csv_writer.writerow([s, repr(loss), repr(lr), repr(gn)])
            csv_file.flush()
            last_step, last_lr = pending[-1][0], pending[-1][2]
            writer.add_scalar("train/loss", float(losses.mean()), last_step)
            writer.add_scalar("train/lr", last_lr, last_step)
            writer.add_scalar("train/grad_norm", sum(grad_norms) / len(grad_norms), last_step)
            writer.add_scalar(
                "train/samples_per_s", interval_steps * tc.batch_size / elapsed, last_step
            )
            bar.set_postfix(loss=f"{float(losses[-1]):.4f}")
        pending.clear()
        interval_start, interval_steps = time.perf_counter(), 0

    def mean_of_ranks(values: torch.Tensor) -> torch.Tensor:
        values = values.detach().float()
        if info.enabled:
            values = values.clone()
            torch.distributed.all_reduce(values)
            values /= info.world_size
        return values.cpu()

    def save(extra_meta: dict | None = None) -> None:
        nonlocal saved
        flush_logs()
        for name, module in (("weights", diffusion), ("EMA weights", ema)):
            if not all(bool(torch.isfinite(p).all()) for p in module.parameters()):
                what = f"the {name} hold NaN/inf"
                raise TrainingDiverged(_diverged(what, step, config, saved))
        payload = make_payload()
        payload["meta"].update(extra_meta or {})
        if info.is_main:
            save_checkpoint(payload, ckpt_path)
            writer.flush()
        saved = (ckpt_path, step)

    # ----- the loop ------------------------------------------------------------------------
    lo, hi = return_range if return_range is not None else (0.0, 1.0)
    max_norm = tc.grad_clip if tc.grad_clip is not None else math.inf
    diffusion.train()
    try:
        while step < tc.steps:
            # Linear warm-up computed from the step alone, so resuming needs no scheduler state.
            lr = tc.lr * min(1.0, (step + 1) / tc.warmup_steps) if tc.warmup_steps else tc.lr
            for group in optimizer.param_groups:
                group["lr"] = lr
            indices = torch.randint(len(windows), (tc.batch_size,), generator=batch_gen)
            batch = windows.batch(indices[info.rank * local_batch : (info.rank + 1) * local_batch])
            x0 = batch["x"].to(dev, non_blocking=True)
            cond = None
            if cond_dim:
                cond = ((batch["returns"] - lo) / max(hi - lo, 1e-8)).to(dev, non_blocking=True)
            loss = loss_module(x0, cond, noise_gen)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(diffusion.parameters(), max_norm)
            optimizer.step()
            step += 1
            ema_update(ema, diffusion, tc.ema_decay if step > tc.ema_start else 0.0)

            pending.append((step, loss.detach(), lr, grad_norm.detach()))
            interval_steps += 1
            if bar is not None:
                bar.update(1)
            if step % tc.log_every == 0:
                flush_logs()
            if step % tc.save_every == 0 and step < tc.steps:
                save()
        flush_logs()
        extra = {}
        if info.enabled:
            # DDP consistency check, recorded in the final checkpoint: 0.0 = identical replicas.
            extra["replica_max_diff"] = replica_max_diff(diffusion, info)
        save(extra)
    finally:
        if info.is_main:
            bar.close()
            writer.close()
            csv_file.close()
    return ckpt_path


def _to_cpu(obj):
    """Optimizer state with every tensor on the CPU (so the file loads on any machine)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj
