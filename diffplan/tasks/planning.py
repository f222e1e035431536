"""A checkpoint + its task -> a planner -> an evaluation: what `diffplan evaluate` runs.

This sits at the top of the stack (it imports `guides`, `planners` and the tasks):

    checkpoint (config: plan + task sections) ──> task_for(config, --env) ──> Task
        plan settings (+ key=value overrides) ──> MPCPlanner(StartState + task guides
        + value guide when --value) ──> evaluate_policy(planner, task) ──> EvalResult
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from pathlib import Path

from diffplan.checkpoint import LoadedModel, load_checkpoint
from diffplan.config import Config, PlanConfig, config_from_dict
from diffplan.errors import ConfigError
from diffplan.tasks import task_for
from diffplan.tasks.base import Task
from diffplan.tasks.evaluation import EvalResult, evaluate_policy
from guides import Guide, ValueGuide
from planners import MPCPlanner
from planners.mpc import planner_arguments

PLANNER_MODES = ("mpc", "open-loop")
EVAL_SECTIONS = ("plan", "task")  # what `evaluate key=value` may override


def evaluation_config(loaded: LoadedModel, overrides: list[str] = ()) -> Config:
    """The checkpoint's config with `plan.*` / `task.*` overrides applied (others refused)."""
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if key.split(".")[0] not in EVAL_SECTIONS:
            raise ConfigError(
                f"override '{item}': only plan.* and task.* settings can change at evaluation "
                "(the model's own settings are fixed by its training)"
            )
    config = config_from_dict(loaded.config.to_dict(), "the command-line overrides", overrides)
    if config.plan.mode not in PLANNER_MODES:
        raise ConfigError(f"plan.mode must be one of {PLANNER_MODES}, got {config.plan.mode!r}")
    return config


def _loaded(checkpoint: str | Path | LoadedModel, device: str) -> LoadedModel:
    if isinstance(checkpoint, LoadedModel):
        return checkpoint
    return load_checkpoint(checkpoint, device=device)


def build_planner(
    checkpoint: str | Path | LoadedModel,
    task: Task | None = None,
    settings: PlanConfig | None = None,
    value: str | Path | None = None,
    inverse_dynamics: str | Path | None = None,
    extra_guides: list[Guide] = (),
    device: str = "cpu",
    critic: str | Path | None = None,
    task_guides: bool = True,
    planner_kwargs: dict | None = None,
) -> MPCPlanner:
    """The planner of `task` for a checkpoint: the start state inpainted, the task's guides
    (e.g. PointMaze's goal; `task_guides=False` leaves them out), value guidance when `value`
    is given, ranking by an in-support critic when `critic` (or `plan.critic`) names one,
    `extra_guides`. The one place planners are built: `diffplan evaluate`,
    `MPCPlanner.from_checkpoint` and the benchmark scripts all call it.

    checkpoint: a path, or a model already loaded (to read the file once).
    inverse_dynamics: a file, or a model already built (obs, next obs -> action).
    planner_kwargs: `MPCPlanner` arguments that are not plan settings (eta, action_filter)."""
    loaded = _loaded(checkpoint, device)
    task = task or task_for(loaded.config)
    settings = settings or loaded.config.plan
    if settings.sampling_steps > loaded.diffusion.n_timesteps:
        raise ConfigError(
            f"plan.sampling_steps={settings.sampling_steps} exceeds the model's "
            f"{loaded.diffusion.n_timesteps} diffusion steps"
        )
    guides: list[Guide] = list(task.planner_guides(loaded, settings)) if task_guides else []
    if value is not None:
        from diffplan.value_training import load_value

        guides.append(
            ValueGuide(
                load_value(value, loaded),
                scale=settings.value_scale,
                guide_steps=settings.value_guide_steps,
                t_stopgrad=settings.value_t_stopgrad,
                scale_grad_by_std=settings.value_scale_grad_by_std,
            )
        )
    critic_path = critic_file(loaded, settings, critic)
    if critic_path is not None:
        from diffplan.critic import load_critic
        from guides import CriticRanking

        if value is not None and settings.value_scale == 0:
            raise ConfigError(
                "both a critic and a value net would rank the plans; give one (drop --value, "
                "or set plan.critic=null), or set plan.value_scale > 0 to guide by the value"
            )
        guides.append(CriticRanking(load_critic(critic_path, loaded), *task.action_bounds()))
    guides += list(extra_guides)
    arguments = planner_arguments(settings)
    layout = task.tracker_dims()
    if arguments["position_dims"] is None and layout is not None:
        arguments["position_dims"], arguments["velocity_dims"] = layout
    for key in ("position_dims", "velocity_dims"):
        bad = [d for d in arguments[key] or () if not 0 <= d < loaded.spec.obs_dim]
        if bad:
            raise ConfigError(
                f"plan.{key} {arguments[key]} names observation dims {bad}, but the model "
                f"observes {loaded.spec.obs_dim} (dims 0..{loaded.spec.obs_dim - 1})"
            )
    if settings.data_support is not None:
        guides.append(data_support_guide(loaded, settings.data_support, arguments["position_dims"]))
    inverse = inverse_dynamics if callable(inverse_dynamics) else None
    if settings.action_mode == "inverse-dynamics" and inverse is None:
        from diffplan.inverse_dynamics import load_inverse_dynamics

        inverse = load_inverse_dynamics(
            inverse_dynamics or Path(loaded.path).with_name("inverse.pt"), loaded
        )
    planner = MPCPlanner(
        loaded.diffusion,
        loaded.normalizer,
        loaded.spec,
        guide=guides,
        return_range=loaded.return_range,
        device=device,
        inverse_dynamics=inverse,
        **{**arguments, **(planner_kwargs or {})},
    )
    planner.description = describe_settings(settings, value is not None, critic_path)
    named = [type(g).__name__ for g in guides if type(g).__name__ not in ("ValueGuide",
             "CriticRanking", "Constraint")]  # fmt: skip
    if named:  # the task's and the user's guides, so that a result says what planned
        planner.description += ", guides: " + " + ".join(named)
    return planner


class NoTask(Task):
    """A checkpoint whose config names no task (synthetic data, your own data without an env):
    no task guides, no state layout; it cannot be evaluated, only planned with."""

    family = "none"

    def __init__(self) -> None:
        super().__init__("none")

    def planner_guides(self, loaded, settings) -> list:
        return []

    def tracker_dims(self):
        return None

    def action_bounds(self):
        return None, None

    @classmethod
    def claims(cls, name: str) -> str | None:
        return None

    def make_env(self, render_mode: str | None = None):
        raise ConfigError("this checkpoint names no task to make an env of; set task.type")


def planner_from_checkpoint(
    checkpoint: str | Path | LoadedModel,
    guide: Guide | list[Guide] | None = None,
    device: str = "cpu",
    value: str | Path | None = None,
    critic: str | Path | None = None,
    inverse_dynamics=None,
    task: Task | None = None,
    **settings,
) -> MPCPlanner:
    """`MPCPlanner.from_checkpoint`: the planner `diffplan evaluate` runs for this checkpoint,
    with keyword overrides: any `plan:` setting (`n_candidates=64`, `kd=10.0`,
    `warm_start=True`) or `MPCPlanner` argument (`eta`, `action_filter`). `guide` given: those
    guides instead of the task's own (e.g. your own `Goal`); None: the task's."""
    import dataclasses

    from diffplan.config import validate_config

    loaded = _loaded(checkpoint, device)
    fields = {f.name for f in dataclasses.fields(PlanConfig)}
    plan_settings = {k: v for k, v in settings.items() if k in fields}
    planner_kwargs = {k: v for k, v in settings.items() if k not in fields}
    allowed = set(inspect.signature(MPCPlanner.__init__).parameters) - {"self"}
    unknown = sorted(set(planner_kwargs) - allowed)
    if unknown:
        close = difflib.get_close_matches(unknown[0], sorted(fields | allowed), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise TypeError(
            f"from_checkpoint got unknown setting(s) {unknown}: pass plan settings "
            f"({', '.join(sorted(fields))}) or MPCPlanner arguments{hint}"
        )
    plan = dataclasses.replace(loaded.config.plan, **plan_settings)
    validate_config(dataclasses.replace(loaded.config, plan=plan), "from_checkpoint's settings")
    if task is None:
        try:
            task = task_for(loaded.config)
        except ConfigError:  # no task: plan without one
            task = NoTask()
    user = None if guide is None else (guide if isinstance(guide, list) else [guide])
    return build_planner(
        loaded, task, plan, value, inverse_dynamics, extra_guides=user or [], device=device,
        critic=critic, task_guides=user is None, planner_kwargs=planner_kwargs,
    )  # fmt: skip


def critic_file(
    loaded: LoadedModel, settings: PlanConfig, critic: str | Path | None = None
) -> Path | None:
    """The critic to rank by: `critic` if given, else `plan.critic` resolved against the
    checkpoint's folder; None when neither names one."""
    name = critic if critic is not None else settings.critic
    if name is None:
        return None
    path = Path(name)
    if critic is None and not path.is_absolute():
        path = Path(loaded.path).parent / path
    if not path.is_file():
        raise ConfigError(
            f"critic {path} not found (plan.critic={settings.critic!r}); train it with "
            f"`diffplan train-critic --checkpoint {loaded.path} --out {path}`, or set "
            "plan.critic=null to plan without it"
        )
    return path


def data_support_guide(loaded: LoadedModel, radius: float, position_dims) -> Guide:
    """`plan.data_support`: rank candidates by how far they leave the positions of the
    training data (`guides.KeepInData`, a grid of radius / 4 cells); ranking only."""
    from guides import Constraint, KeepInData
    from guides.support import GridTooLargeError

    if not position_dims:
        raise ConfigError(
            "plan.data_support needs the positions of the state: set plan.position_dims "
            "(e.g. [0, 1]); this task names none"
        )
    try:
        cost = KeepInData.from_checkpoint(
            loaded, dims=position_dims, radius=radius, cell=radius / 4
        )
    except GridTooLargeError:  # the grid's cell is radius / 4
        raise ConfigError(
            f"plan.data_support={radius} makes a grid of cells {radius / 4:g} too large for "
            "the data's extent; use a larger distance"
        ) from None
    except ValueError as e:
        raise ConfigError(f"plan.data_support: {e}") from None
    return Constraint(cost, active_fraction=0.0, name="data_support")


def describe_settings(settings: PlanConfig, value: bool, critic: Path | None = None) -> str:
    """What was run, in one line: e.g. 'mpc (replan every 1), ddpm 20 steps, 64 candidates'."""
    if settings.mode == "open-loop":
        how = "open-loop (one plan per episode)"
    else:
        how = f"mpc (replan every {settings.replan_every})"
    parts = [how, f"{settings.sampler} {settings.sampling_steps} steps",
             f"{settings.n_candidates} candidates", f"actions: {settings.action_mode}"]  # fmt: skip
    if settings.warm_start:
        parts.append(f"warm start t={settings.warm_start_t}")
    if settings.elite > 1:
        parts.append(f"mean action of the best {settings.elite}")
    if settings.temperature != 1.0:
        parts.append(f"temperature {settings.temperature:g}")
    if settings.data_support is not None:
        parts.append(f"data support {settings.data_support:g}")
    if value:
        parts.append(
            "value ranking"
            if settings.value_scale == 0
            else f"value guidance {settings.value_scale}"
        )
    if critic is not None:
        parts.append(f"critic ranking ({critic.name})")
    return ", ".join(parts)


def evaluate_checkpoint(
    checkpoint: str | Path | LoadedModel,
    task: Task | None = None,
    settings: PlanConfig | None = None,
    value: str | Path | None = None,
    inverse_dynamics: str | Path | None = None,
    critic: str | Path | None = None,
    episodes: int | None = None,
    n_envs: int | None = None,
    seed: int | None = None,
    plot: str | Path | None = None,
    plot_episodes: int = 4,
    progress: bool = True,
    device: str = "cpu",
    max_episode_steps: int | None = None,
    on_result: Callable[[EvalResult], None] | None = None,
) -> EvalResult:
    """Evaluate a checkpoint's planner on its task (or `task`); episodes / n_envs / seed
    default to the config's `task:` section. Optionally a PNG of the first episodes, drawn
    after `on_result(result)` (e.g. writing the results: a failed plot then loses none)."""
    loaded = _loaded(checkpoint, device)
    task = task or task_for(loaded.config)
    task.check_model(loaded)
    tc = loaded.config.task
    planner = build_planner(
        loaded, task, settings, value, inverse_dynamics, device=device, critic=critic
    )
    record = plot_episodes if plot else 0
    plans: dict[int, dict] = {}
    result = evaluate_policy(
        planner,
        task,
        episodes=tc.episodes if episodes is None else episodes,
        seed=tc.seed if seed is None else seed,
        n_envs=tc.n_envs if n_envs is None else n_envs,
        progress=progress,
        record_paths=record,
        max_episode_steps=max_episode_steps,
        record_plans=plans if plot else None,
    )
    if on_result is not None:
        on_result(result)
    if plot:
        out = task.plot(result, plans, planner.spec, plot)
        if out is None:
            from diffplan.tasks.plots import plot_returns

            plot_returns({result.policy: result.returns}, plot, title=result.description)
    return result
