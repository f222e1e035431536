"""Typed run configuration, read from YAML with strict keys and `key=value` overrides.

An unknown or misspelt key, a value of the wrong type or out of range (`validate_config`) is a
`ConfigError` naming the key and where it came from: the file, or the command-line override.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from diffplan.backbones import BACKBONES
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
    type: str = "unet"  # the denoising network: a name in diffplan.backbones.BACKBONES
    horizon: int = 32
    stride: int = 1
    dim: int = 32  # U-Net base channels; the transformer's width
    dim_mults: list[int] = field(default_factory=lambda: [1, 2, 4, 8])  # U-Net only
    kernel_size: int = 5  # U-Net only
    depth: int = 4  # transformer only: blocks
    heads: int = 4  # transformer only: attention heads (dim must be divisible by it)
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
class CriticConfig:
    """IQL's in-support critic, Q(s, a) and V(s) (`diffplan train-critic`, diffplan/critic.py).

    Defaults are IQL's locomotion settings (Kostrikov et al., 2022): expectile 0.7, discount
    0.99, two hidden layers of 256, Adam 3e-4, batch 256, target update 0.005."""

    expectile: float = 0.7
    discount: float = 0.99
    hidden: list[int] = field(default_factory=lambda: [256, 256])
    steps: int = 100000
    batch_size: int = 256
    lr: float = 3e-4
    target_update: float = 0.005


@dataclass
class PlanConfig:
    """How the planner acts at evaluation (`diffplan evaluate` flags override each one)."""

    mode: str = "mpc"  # mpc: replan every `replan_every` env steps | open-loop: plan once
    n_candidates: int = 16
    # Execute the mean action of the `elite` best-scored candidates (1: the best plan's own;
    # see planners.MPCPlanner): averages out the behaviour policy's sampling noise.
    elite: int = 1
    # Scale of the sampler's starting noise: 1 samples the model's distribution, below 1
    # nearer its modes (less of the behaviour policy's noise).
    temperature: float = 1.0
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
    lookahead: int = 1  # the PD tracker aims this many env steps ahead on the plan
    # ...fewer where the straight line there leaves the plan by more than this (env units; a
    # far lookahead otherwise cuts the plan's bends, e.g. through a keep-out disk); null: off
    bend_tolerance: float | None = None
    # Rank candidates feasibility first by how far their path (segments included) leaves the
    # positions the training data visited, beyond this distance (env units; ranking only,
    # `guides.KeepInData`): a plan through a wall that no episode crossed ranks last. null: off
    data_support: float | None = None
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
    # Rank candidates by an in-support critic's Q(first state, first action) (IDQL-style;
    # `diffplan train-critic`): the critic file, relative to the checkpoint's folder unless
    # absolute; `evaluate --critic FILE` overrides it. null: no critic.
    critic: str | None = None


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
    critic: CriticConfig = field(default_factory=CriticConfig)
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


class _Sources:
    """Where each key's value came from: the file (or dict) by default, or the command-line
    override that set it (or set a section above it)."""

    def __init__(self, default: str, overrides: dict[str, str] | None = None):
        self.default = default
        self.overrides = overrides or {}

    def __call__(self, where: str) -> str:
        parts = where.split(".")
        for n in range(len(parts), 0, -1):
            item = self.overrides.get(".".join(parts[:n]))
            if item is not None:
                return f"the command-line override '{item}'"
        for key, item in self.overrides.items():  # a section that only an override made
            if key.startswith(where + "."):
                return f"the command-line override '{item}'"
        return self.default


def _build(cls: type, raw: dict, section: str, sources: _Sources):
    if not isinstance(raw, dict):
        raise ConfigError(
            f"config section '{section or '<top>'}' in {sources(section)} must be a mapping"
        )
    types = _field_types(cls)
    kwargs = {}
    for key, value in raw.items():
        where = f"{section}.{key}" if section else key
        if key not in types:
            raise _unknown_key(key, section, list(types), sources(where))
        annotation = types[key]
        if dataclasses.is_dataclass(annotation):
            kwargs[key] = _build(annotation, value or {}, where, sources)
        else:
            kwargs[key] = _coerce(value, annotation, where, sources(where))
    return cls(**kwargs)


def _parse_override(item: str) -> tuple[list[str], typing.Any]:
    if "=" not in item:
        raise ConfigError(
            f"command-line override '{item}' must look like key=value (e.g. train.steps=500)"
        )
    key, text = item.split("=", 1)
    path = key.strip().split(".")
    if not all(path):
        raise ConfigError(
            f"command-line override '{item}' has an empty key part; write section.key=value"
        )
    try:
        value = yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError as e:
        raise ConfigError(
            f"command-line override '{item}': cannot read the value {text!r} "
            f"({getattr(e, 'problem', None) or type(e).__name__}); quote it or fix the brackets"
        ) from None
    return path, value


def config_from_dict(raw: dict, source: str = "<dict>", overrides: list[str] = ()) -> Config:
    """A validated `Config` from a plain dict (e.g. parsed YAML) and `key=value` overrides."""
    if not isinstance(raw, dict | type(None)):
        raise ConfigError(f"the config in {source} must be a mapping, got {type(raw).__name__}")
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in (raw or {}).items()}
    applied: dict[str, str] = {}
    for item in overrides:
        path, value = _parse_override(item)
        node = raw
        for part in path[:-1]:
            if node.get(part) is None:  # absent, or an empty section in the file (`train:`)
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict):
                raise ConfigError(f"command-line override '{item}': '{part}' is not a section")
        node[path[-1]] = value
        applied[".".join(path)] = item
    sources = _Sources(source, applied)
    config = _build(Config, raw, "", sources)
    validate_config(config, sources)
    return config


# Allowed values, kept here (not imported) so that reading a config needs no torch.
DATA_SOURCES = ("minari", "d4rl", "synthetic")
SYNTHETIC_KINDS = ("lines", "two_mode")  # diffplan.data.synthetic.SYNTHETIC_KINDS
NORMALIZERS = ("limits", "gaussian", "cdf")  # diffplan.normalizer.KINDS
END_POLICIES = ("pad", "drop")  # diffplan.data.windows.END_POLICIES
REWARD_TYPES = ("dense", "sparse")  # diffplan.data.relabel.REWARD_TYPES
SCHEDULES = ("cosine", "linear")  # diffplan.diffusion.SCHEDULES
PREDICTIONS = ("x0", "epsilon", "v")  # diffplan.diffusion.PREDICTIONS
SAMPLERS = ("ddim", "ddpm")
_DEVICE = re.compile(r"cpu|auto|cuda(:\d+)?")


def validate_config(config: Config, source: str | _Sources = "the config") -> None:
    """Check every value's range (types are checked when reading); the first bad value is a
    `ConfigError` naming its key, where it came from, what it must be and what it is."""
    sources = source if isinstance(source, _Sources) else _Sources(source)
    d, m, f, t = config.data, config.model, config.diffusion, config.train
    v, p, c = config.value, config.plan, config.critic

    def finite(x: float | None, low: float = -math.inf) -> bool:
        return x is not None and math.isfinite(x) and x >= low

    def choice(options: tuple[str, ...]) -> str:
        return "one of " + ", ".join(options)

    levels = max(len(m.dim_mults), 1)
    rules: list[tuple[str, bool, str]] = [
        ("data.source", d.source in DATA_SOURCES, choice(DATA_SOURCES)),
        ("data.dataset", d.source != "synthetic" or d.dataset in ("", *SYNTHETIC_KINDS),
         "empty or " + choice(SYNTHETIC_KINDS) + " when data.source is synthetic"),
        ("data.normalizer", d.normalizer in NORMALIZERS, choice(NORMALIZERS)),
        ("data.end_policy", d.end_policy in END_POLICIES, choice(END_POLICIES)),
        ("data.discount", finite(d.discount, 0.0) and d.discount <= 1.0, "in [0, 1]"),
        ("data.termination_penalty", finite(d.termination_penalty), "a finite number"),
        ("data.synthetic_episodes", d.synthetic_episodes >= 1, ">= 1"),
        ("data.reward_goal", d.reward_goal is None
         or (len(d.reward_goal) == 2 and all(map(finite, d.reward_goal))),
         "null or a goal [x, y] of two finite numbers"),
        ("data.reward_type", d.reward_type in REWARD_TYPES, choice(REWARD_TYPES)),
        ("data.return_horizon", d.return_horizon is None or d.return_horizon >= 1,
         "null or >= 1 env step"),
        ("model.horizon", m.horizon >= 1, ">= 1"),
        ("model.stride", m.stride >= 1, ">= 1"),
        ("model.dim", m.dim >= 1, ">= 1"),
        ("model.dim_mults", len(m.dim_mults) >= 1 and all(x >= 1 for x in m.dim_mults),
         "a non-empty list of integers >= 1"),
        ("model.kernel_size", m.kernel_size >= 1 and m.kernel_size % 2 == 1,
         "an odd integer >= 1 (the convolutions keep the horizon's length)"),
        ("model.type", m.type in BACKBONES, choice(tuple(BACKBONES))),
        ("model.horizon", m.type != "unet" or m.horizon % 2 ** (levels - 1) == 0,
         f"divisible by {2 ** (levels - 1)}: the U-Net of model.dim_mults {m.dim_mults} "
         f"halves it {levels - 1} times"),
        ("model.depth", m.depth >= 1, ">= 1"),
        ("model.heads", m.type != "transformer" or (m.heads >= 1 and m.dim % m.heads == 0),
         f">= 1 and a divisor of model.dim ({m.dim}) for the transformer"),
        ("diffusion.n_timesteps", f.n_timesteps >= 1, ">= 1"),
        ("diffusion.schedule", f.schedule in SCHEDULES, choice(SCHEDULES)),
        ("diffusion.prediction", f.prediction in PREDICTIONS, choice(PREDICTIONS)),
        ("diffusion.action_weight", finite(f.action_weight, 0.0), ">= 0"),
        ("diffusion.loss_discount", finite(f.loss_discount) and f.loss_discount > 0, "> 0"),
        ("diffusion.dim_weights", f.dim_weights is None
         or all(finite(w, 0.0) for w in f.dim_weights), "null or a list of numbers >= 0"),
        ("diffusion.condition_steps", all(-m.horizon <= s < m.horizon for s in f.condition_steps),
         f"planned steps in [-{m.horizon}, {m.horizon}) (model.horizon is {m.horizon})"),
        ("diffusion.clip_denoised", f.clip_denoised is None
         or (finite(f.clip_denoised) and f.clip_denoised > 0), "null or > 0"),
        ("diffusion.cond_dropout", finite(f.cond_dropout, 0.0) and f.cond_dropout < 1.0,
         "in [0, 1)"),
        ("train.steps", t.steps >= 1, ">= 1"),
        ("train.batch_size", t.batch_size >= 1, ">= 1"),
        ("train.lr", finite(t.lr) and t.lr > 0, "a finite number > 0"),
        ("train.weight_decay", finite(t.weight_decay, 0.0), ">= 0"),
        ("train.warmup_steps", t.warmup_steps >= 0, ">= 0"),
        ("train.grad_clip", t.grad_clip is None or (finite(t.grad_clip) and t.grad_clip > 0),
         "null or > 0"),
        ("train.ema_decay", finite(t.ema_decay, 0.0) and t.ema_decay < 1.0,
         "in [0, 1) (0 copies the weights; 1 would never update the EMA)"),
        ("train.ema_start", t.ema_start >= 0, ">= 0"),
        ("train.log_every", t.log_every >= 1, ">= 1 step"),
        ("train.save_every", t.save_every >= 1, ">= 1 step"),
        ("train.device", bool(_DEVICE.fullmatch(t.device)), "cpu, cuda, cuda:N or auto"),
        ("train.threads", t.threads >= 0, ">= 0 (0: half the cores)"),
        ("value.dim", v.dim >= 1, ">= 1"),
        ("value.dim_mults", len(v.dim_mults) >= 1 and all(x >= 1 for x in v.dim_mults),
         "a non-empty list of integers >= 1"),
        ("value.kernel_size", v.kernel_size >= 1 and v.kernel_size % 2 == 1,
         "an odd integer >= 1"),
        ("value.steps", v.steps >= 1, ">= 1"),
        ("value.batch_size", v.batch_size >= 1, ">= 1"),
        ("value.lr", finite(v.lr) and v.lr > 0, "a finite number > 0"),
        ("critic.expectile", finite(c.expectile) and 0.0 < c.expectile < 1.0, "in (0, 1)"),
        ("critic.discount", finite(c.discount, 0.0) and c.discount < 1.0, "in [0, 1)"),
        ("critic.hidden", len(c.hidden) >= 1 and all(x >= 1 for x in c.hidden),
         "a non-empty list of layer widths >= 1"),
        ("critic.steps", c.steps >= 1, ">= 1"),
        ("critic.batch_size", c.batch_size >= 1, ">= 1"),
        ("critic.lr", finite(c.lr) and c.lr > 0, "a finite number > 0"),
        ("critic.target_update", finite(c.target_update) and 0.0 < c.target_update <= 1.0,
         "in (0, 1]"),
        ("plan.n_candidates", p.n_candidates >= 1, ">= 1"),
        ("plan.temperature", finite(p.temperature) and 0 < p.temperature <= 1, "in (0, 1]"),
        ("plan.elite", 1 <= p.elite <= p.n_candidates,
         f"in 1..plan.n_candidates ({p.n_candidates})"),
        ("plan.sampler", p.sampler in SAMPLERS, choice(SAMPLERS)),
        ("plan.sampling_steps", p.sampling_steps >= 1, ">= 1"),
        ("plan.replan_every", p.replan_every >= 0, ">= 0 (0: plan once per episode)"),
        ("plan.kp", finite(p.kp, 0.0), ">= 0"),
        ("plan.kd", finite(p.kd, 0.0), ">= 0"),
        ("plan.lookahead", p.lookahead >= 1, ">= 1 env step"),
        ("plan.bend_tolerance", p.bend_tolerance is None or finite(p.bend_tolerance, 0.0),
         "null or a distance >= 0"),
        ("plan.data_support", p.data_support is None
         or (finite(p.data_support) and p.data_support > 0),
         "null or a distance > 0 (e.g. 0.2 on PointMaze)"),
        ("plan.critic", p.critic is None or p.critic.strip() != "",
         "null or a critic file name (e.g. critic.pt)"),
    ]  # fmt: skip
    for key, ok, requirement in rules:
        if not ok:
            section, name = key.split(".")
            value = getattr(getattr(config, section), name)
            raise ConfigError(
                f"config key '{key}' in {sources(key)} must be {requirement}, got {value!r}"
            )


def _yaml_problem(e: yaml.YAMLError) -> str:
    """The parser's reason with its line and column (1-based), on one line."""
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    context = getattr(e, "context", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return where + problem + (f" ({context})" if context else "")


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, but a key written twice in one mapping is an error, not a
    silently dropped first value."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"'{key}' is written twice (first on line {seen[key] + 1}); "
                    "keep one: the first would be lost",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def load_config(path: str | Path, overrides: list[str] = ()) -> Config:
    """Read a YAML config (and the `base:` files it builds on), apply `key=value` overrides,
    validate; errors are `ConfigError`.

    `base: other.yaml` (relative to the file) starts from that file's settings; the file's own
    keys replace the base's, section by section. Bases may have bases; a missing base, a cycle
    and a misspelt key (named with the file that holds it) are one line each."""
    path = Path(path)
    raw = _read_with_bases(path, [])
    return config_from_dict(raw, str(path), overrides)


def _read_yaml(path: Path, what: str = "config file") -> dict:
    if path.is_dir():
        raise ConfigError(f"{what} {path} is a directory; pass a YAML file (see configs/)")
    if not path.is_file():
        raise ConfigError(f"{what} {path} not found; see configs/ for the shipped ones")
    try:
        raw = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)  # noqa: S506 (safe)
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} {path} is not valid YAML: {_yaml_problem(e)}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read {what} {path} ({e})") from None
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(
            f"{what} {path} must hold a mapping of sections (name:, data:, model:, "
            f"train:, ...) at its top level, but holds a {type(raw).__name__}"
        )
    return raw or {}


def _read_with_bases(path: Path, chain: list[Path]) -> dict:
    """The file's settings over those of its `base:` chain (each file's keys checked
    against the schema under its own name)."""
    raw = dict(_read_yaml(path, "config file" if not chain else "base config"))
    base = raw.pop("base", None)
    _build(Config, raw, "", _Sources(str(path)))  # a misspelt key names this file
    if base is None:
        return raw
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(f"config key 'base' in {path} must be a file name, got {base!r}")
    base_path = path.parent / base
    if not base_path.is_file():
        raise ConfigError(
            f"config key 'base' in {path} names {base}, but {base_path} does not exist"
        )
    seen = [*chain, path.resolve()]
    if base_path.resolve() in seen:
        loop = " -> ".join(p.name for p in [*seen, base_path.resolve()])
        raise ConfigError(f"config bases form a cycle: {loop}; remove one 'base:'")
    return _merge(_read_with_bases(base_path, seen), raw)


def _merge(base: dict, own: dict) -> dict:
    """`own` over `base`: sections merge key by key, everything else is replaced."""
    out = dict(base)
    for key, value in own.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def save_config(config: Config, path: str | Path) -> None:
    """Write the config as YAML atomically (temp file + rename: never half a file)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    os.replace(tmp, path)
