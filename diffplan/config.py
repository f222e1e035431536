"""Typed run configuration, read from YAML with strict keys and `key=value` overrides.

An unknown or misspelt key is a `ConfigError` naming the key, the section and the file.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from diffplan.errors import ConfigError


@dataclass
class DataConfig:
    source: str = "minari"  # minari | d4rl | synthetic
    dataset: str = ""  # Minari id or directory, D4RL .hdf5 path, or synthetic kind
    root: str | None = None  # Minari datasets root (default: MINARI_DATASETS_PATH)
    # Minari: read goals from this info key (e.g. "goal") instead of a dict observation's
    # `desired_goal` (D4RL files: `infos/goal` is always read).
    goal_info_key: str | None = None
    normalizer: str = "limits"  # limits | gaussian | cdf
    end_policy: str = "pad"  # pad | drop
    discount: float = 0.99
    termination_penalty: float = 0.0
    synthetic_episodes: int = 256  # only for source=synthetic
    # Hindsight relabelling (diffplan/data/relabel.py): recompute every reward for ONE fixed
    # goal (x, y) in env units, with the PointMaze reward `reward_type` (dense: exp(-distance),
    # sparse: 1 within 0.45). For a B1/B2 maze's goal cell: MazeGrid.cell_to_xy((row, col)),
    # e.g. U-Maze (1,1) -> [-1.0, 1.0], Medium (6,6) -> [2.5, -2.5]. null: keep the stored rewards.
    reward_goal: list[float] | None = None
    reward_type: str = "dense"  # dense | sparse (only used with reward_goal)
    # Return target of windows (value net, return conditioning): null = discounted return-to-go
    # to the episode's end; an integer h = discounted return over the h env steps from the
    # window's start (past the episode's end the last reward repeats, as `pad` repeats the
    # last observation; zero after a termination). h = (horizon-1)*stride+1 covers the window.
    return_horizon: int | None = None


@dataclass
class ModelConfig:
    horizon: int = 32
    stride: int = 1
    dim: int = 32
    dim_mults: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    kernel_size: int = 5
    return_conditioning: bool = False  # condition the denoiser on the normalized return
    # Diffuse observations only (Decision Diffuser); actions then come from an inverse-dynamics
    # model a_t = f(s_t, s_t+stride) (`diffplan train-inverse`, plan.action_mode).
    states_only: bool = False


@dataclass
class DiffusionConfig:
    n_timesteps: int = 20
    schedule: str = "cosine"
    prediction: str = "x0"  # x0 | epsilon | v
    action_weight: float = 10.0
    loss_discount: float = 1.0
    dim_weights: list[float] | None = None
    condition_steps: list[int] = field(default_factory=lambda: [0])
    clip_denoised: float | None = 1.0
    cond_dropout: float = 0.25


@dataclass
class TrainConfig:
    steps: int = 10000
    batch_size: int = 32
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0
    grad_clip: float | None = 1.0
    ema_decay: float = 0.995
    ema_start: int = 0  # steps before the EMA starts tracking
    log_every: int = 50
    save_every: int = 1000
    seed: int = 0
    device: str = "auto"  # cpu | cuda | auto
    threads: int = 0  # torch CPU threads; 0 = half the cores (see distributed.set_cpu_threads)


@dataclass
class ValueConfig:
    """The value network of Diffuser-style guidance (`diffplan train-value`)."""

    dim: int = 32
    dim_mults: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    kernel_size: int = 5
    steps: int = 5000
    batch_size: int = 64
    lr: float = 2e-4


@dataclass
class PlanConfig:
    """How the planner acts at evaluation (`diffplan evaluate` flags override each one)."""

    mode: str = "mpc"  # mpc: replan every `replan_every` env steps | open-loop: plan once
    n_candidates: int = 16
    sampler: str = "ddim"
    sampling_steps: int = 10
    warm_start: bool = False
    warm_start_t: int | None = None
    # diffused: the plan's first action | track: PD on its states | inverse-dynamics:
    # f(current state, next planned state) with the model of `diffplan train-inverse`
    action_mode: str = "diffused"
    replan_every: int = 1
    # PD gains measured by tracking the dataset's own PointMaze episodes: 20 / 2 followed them
    # closest (mean position error 0.06, against 0.10 for the data controller's 10 / 1).
    kp: float = 20.0
    kd: float = 2.0
    lookahead: int = 1
    seed: int = 0
    # The state layout: observation dims that are positions / velocities (goal guides and the
    # PD tracker use them); null: taken from the task (PointMaze: [0, 1] / [2, 3]).
    position_dims: list[int] | None = None
    velocity_dims: list[int] | None = None
    # Value guidance (Diffuser) when a value net is attached (`evaluate --value FILE`):
    # gradient steps of `value_scale` (0: rank candidates by value only, no gradients).
    value_scale: float = 0.1
    value_guide_steps: int = 2
    value_t_stopgrad: int = 2
    value_scale_grad_by_std: bool = True


@dataclass
class TaskConfig:
    """How checkpoints of this config are evaluated (a registered task family, diffplan/tasks/).

    type: pointmaze | locomotion | gym; empty: inferred from data.dataset.
    env: the family's env name (pointmaze: umaze | medium | large; locomotion: hopper |
        walker2d | halfcheetah; gym: a registered gymnasium id); empty: inferred from the data.
    options: family-specific options, checked by the family (pointmaze: dense, multi_task).
    """

    type: str = ""
    env: str = ""
    options: dict = field(default_factory=dict)
    episodes: int = 100
    n_envs: int = 10
    seed: int = 123
    max_episode_steps: int | None = None


@dataclass
class Config:
    name: str = "run"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    value: ValueConfig = field(default_factory=ValueConfig)
    plan: PlanConfig = field(default_factory=PlanConfig)
    task: TaskConfig = field(default_factory=TaskConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _field_types(cls: type) -> dict[str, typing.Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _unknown_key(key: str, section: str, known: list[str], source: str) -> ConfigError:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(known)}"
    where = f"{section}.{key}" if section else key
    return ConfigError(f"unknown config key '{where}' in {source}{hint}")


def _coerce(value: typing.Any, annotation: typing.Any, where: str, source: str) -> typing.Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if value is None:
        if annotation is type(None) or type(None) in args:
            return None
        raise ConfigError(f"config key '{where}' in {source} must not be null")
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where, source)
            except ConfigError:
                continue
        raise ConfigError(
            f"config key '{where}' in {source}: cannot read {value!r} as {annotation}"
        )
    if annotation is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{where}' in {source} must be a mapping, got {value!r}")
        return dict(value)
    if origin is list:
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"config key '{where}' in {source} must be a list, got {value!r}")
        return [_coerce(v, args[0], where, source) for v in value]
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{where}' in {source} must be true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"config key '{where}' in {source} must be an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads `2e-4` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"config key '{where}' in {source} must be a number, got {value!r}")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"config key '{where}' in {source} must be a string, got {value!r}")
    return value


def _build(cls: type, raw: dict, section: str, source: str):
    if not isinstance(raw, dict):
        raise ConfigError(f"config section '{section or '<top>'}' in {source} must be a mapping")
    types = _field_types(cls)
    kwargs = {}
    for key, value in raw.items():
        if key not in types:
            raise _unknown_key(key, section, list(types), source)
        where = f"{section}.{key}" if section else key
        annotation = types[key]
        if dataclasses.is_dataclass(annotation):
            kwargs[key] = _build(annotation, value or {}, where, source)
        else:
            kwargs[key] = _coerce(value, annotation, where, source)
    return cls(**kwargs)


def _parse_override(item: str) -> tuple[list[str], typing.Any]:
    if "=" not in item:
        raise ConfigError(f"override '{item}' must look like key=value (e.g. train.steps=500)")
    key, text = item.split("=", 1)
    return key.strip().split("."), yaml.safe_load(text) if text != "" else ""


def config_from_dict(raw: dict, source: str = "<dict>", overrides: list[str] = ()) -> Config:
    raw = dict(raw or {})
    for item in overrides:
        path, value = _parse_override(item)
        node = raw
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}': '{part}' is not a section")
        node[path[-1]] = value
    return _build(Config, raw, "", source)


def load_config(path: str | Path, overrides: list[str] = ()) -> Config:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found; see configs/ for the shipped ones")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}".splitlines()[0]) from e
    source = str(path)
    try:
        return config_from_dict(raw, source, overrides)
    except ConfigError as e:
        if overrides and "override" not in str(e) and source in str(e):
            raise ConfigError(f"{e} (or in the command-line overrides)") from e
        raise


def save_config(config: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
