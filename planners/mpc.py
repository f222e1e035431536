"""The MPC planner: observation in, action out, in env units, from a checkpoint alone.

One call plans for E environments at once, N candidates each, in a single batched sample:

    observation (E, obs_dim) ──> inpaint as planned step 0 ──> sample (E*N, H, D)
        ──> score with the guides ──> best plan per env (E, H, D) ──> first action(s)

Between replans (every `replan_every` env steps; 0 = once per episode) it keeps executing
the current plan: the diffused actions, or a PD tracker following the planned states.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from diffplan.guidance import Compose, Guide, GuideContext
from diffplan.spec import TrajectorySpec
from guides.inpaint import StartState
from planners.tracking import PDTracker, plan_at

ACTION_MODES = ("diffused", "track", "inverse-dynamics")


@dataclass
class Plan:
    """The outcome of one planning call, env units."""

    candidates: torch.Tensor  # (E, N, H, D)
    scores: torch.Tensor | None  # (E, N), higher is better
    best: torch.Tensor  # (E, H, D)
    best_normalized: torch.Tensor  # (E, H, D), what a warm start continues from
    best_index: torch.Tensor  # (E,)
    diagnostics: dict[str, torch.Tensor] = field(default_factory=dict)  # each (E,) for the best


def planner_arguments(plan) -> dict:
    """`MPCPlanner` keyword arguments from a config's `plan:` section (a `PlanConfig`)."""
    return {
        "n_candidates": plan.n_candidates,
        "sampler": plan.sampler,
        "sampling_steps": plan.sampling_steps,
        "warm_start": plan.warm_start,
        "warm_start_t": plan.warm_start_t,
        "action_mode": plan.action_mode,
        "replan_every": 0 if plan.mode == "open-loop" else plan.replan_every,
        "tracker": PDTracker(
            kp=plan.kp, kd=plan.kd, lookahead=plan.lookahead, bend_tolerance=plan.bend_tolerance
        ),
        "seed": plan.seed,
        "elite": plan.elite,
        "temperature": plan.temperature,
        "position_dims": plan.position_dims,
        "velocity_dims": plan.velocity_dims,
    }


class MPCPlanner:
    """Sample N candidate plans per environment, keep the best by the guides' scores, act.

    diffusion, normalizer, spec: the trained model (see `from_checkpoint`).
    guide: a Guide or list of guides (the start state is always inpainted).
    n_candidates: plans sampled per environment and decision.
    sampler, sampling_steps, eta: as `Diffusion.sample`.
    warm_start: start from the previous best plan, shifted by the steps executed since, noised
        to timestep `warm_start_t` (default: a third of the schedule).
    action_mode: "diffused" executes the plan's actions; "track" follows its states with
        `tracker` (needed when stride > 1); "inverse-dynamics" asks `inverse_dynamics`
        (obs (E, obs_dim), next planned obs (E, obs_dim) -> (E, act_dim), env units) for the
        action that leads to the next planned state (states-only models).
    replan_every: env steps between plans; 0 plans once per episode (open loop).
    temperature: scale of the sampler's starting noise (1: the model's own distribution;
        below 1: plans nearer its modes).
    elite: the kept plan's actions are the mean of the `elite` best-scored candidates' actions
        (its states stay the best one's). 1: the best plan as sampled. Above 1 it averages out
        the sampling noise the model learned from a stochastic behaviour policy, among plans
        the scores agree on; an average of two different ways is no way, so keep it 1 where
        plans are multimodal (goal reaching round an obstacle).
    position_dims, velocity_dims: which observation dims are positions / velocities (goal
        guides and the tracker default to them).
    action_filter: optional ``(observation (E, obs_dim), action (E, act_dim)) -> action``
        applied to every executed action, env units (e.g. `planners.KeepOutBrake`, which
        brakes before a keep-out region); its position/velocity dims default to the planner's.

    After each `act` call, `replanned` (R,) says which rows got a new plan this call, and
    `last_plan` holds those rows' plans in the same order.
    """

    def __init__(
        self,
        diffusion,
        normalizer,
        spec: TrajectorySpec,
        guide: Guide | list[Guide] | None = None,
        n_candidates: int = 16,
        sampler: str = "ddim",
        sampling_steps: int | None = 10,
        eta: float | None = None,
        warm_start: bool = False,
        warm_start_t: int | None = None,
        action_mode: str = "diffused",
        replan_every: int = 1,
        tracker: PDTracker | None = None,
        return_range: tuple[float, float] | None = None,
        seed: int = 0,
        device: str | torch.device = "cpu",
        inverse_dynamics=None,
        position_dims: list[int] | None = None,
        velocity_dims: list[int] | None = None,
        action_filter=None,
        elite: int = 1,
        temperature: float = 1.0,
    ):
        if action_mode not in ACTION_MODES:
            raise ValueError(f"action_mode must be one of {ACTION_MODES}, got {action_mode!r}")
        if action_mode == "diffused" and spec.stride > 1 and replan_every != 1:
            raise ValueError(
                "a strided plan only has actions every `stride` steps: use action_mode='track' "
                "or replan_every=1"
            )
        if action_mode == "inverse-dynamics" and inverse_dynamics is None:
            raise ValueError("action_mode='inverse-dynamics' needs an inverse_dynamics model")
        if spec.act_dim == 0 and action_mode == "diffused":
            raise ValueError(
                "this model diffuses states only: use action_mode='inverse-dynamics' or 'track'"
            )
        if n_candidates < 1:
            raise ValueError(f"n_candidates must be >= 1, got {n_candidates}")
        if not 1 <= elite <= n_candidates:
            raise ValueError(f"elite must be in 1..n_candidates ({n_candidates}), got {elite}")
        if elite > 1 and spec.act_dim == 0:
            raise ValueError("elite > 1 averages planned actions; this model plans states only")
        self.device = torch.device(device)
        self.diffusion = diffusion.to(self.device).eval()
        self.normalizer = normalizer
        self.spec = spec
        user_guides = guide if isinstance(guide, list) else ([guide] if guide else [])
        self.guide = Compose([StartState(), *user_guides])
        self.n_candidates = n_candidates
        self.elite = elite
        if not 0 < temperature <= 1:
            raise ValueError(f"temperature must be in (0, 1], got {temperature}")
        self.temperature = float(temperature)
        self.sampler = sampler
        self.sampling_steps = sampling_steps
        self.eta = eta
        self.warm_start = warm_start
        self.warm_start_t = (
            max(1, diffusion.n_timesteps // 3) if warm_start_t is None else warm_start_t
        )
        self.action_mode = action_mode
        self.replan_every = replan_every
        self.position_dims = None if position_dims is None else list(position_dims)
        self.velocity_dims = None if velocity_dims is None else list(velocity_dims)
        self.tracker = tracker or PDTracker()
        if self.tracker.position_dims is None:
            self.tracker.position_dims = self.position_dims
        if self.tracker.velocity_dims is None:
            self.tracker.velocity_dims = self.velocity_dims
        self.inverse_dynamics = inverse_dynamics
        self.action_filter = action_filter
        for name in ("position_dims", "velocity_dims"):
            if action_filter is not None and getattr(action_filter, name, 0) is None:
                setattr(action_filter, name, getattr(self, name))
        self.return_range = return_range
        self.replanned: np.ndarray = np.zeros(0, dtype=bool)
        self.description = "MPCPlanner"  # what was run, for result tables
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.last_plan: Plan | None = None
        self._warned_goal = False
        self._plans: torch.Tensor | None = None  # (E, H, D) env units, current plan per env
        self._plans_normalized: torch.Tensor | None = None  # the same, normalized
        self._since_plan: np.ndarray | None = None  # (E,) env steps since each env's plan
        self._episode_steps: np.ndarray | None = None  # (E,) env steps since each env's reset

    @classmethod
    def from_checkpoint(
        cls,
        path: str,
        guide: Guide | list[Guide] | None = None,
        device: str = "cpu",
        value: str | None = None,
        critic: str | None = None,
        inverse_dynamics=None,
        **settings,
    ) -> MPCPlanner:
        """The planner `diffplan evaluate --checkpoint path` runs, for your own loop; no dataset
        or environment needed.

        Built by the same function as the CLI's (`diffplan.tasks.planning.build_planner`):
        the checkpoint's `plan:` section, its task's guides and state layout (`guide=` replaces
        the task's guides with yours), `value=` / `critic=` files, and keywords that override
        any plan setting (`n_candidates=64`, `kd=10.0`) or `MPCPlanner` argument (`eta`).
        An inverse-dynamics model: `inverse_dynamics=PATH` (default: inverse.pt beside it).
        """
        # Imported here: the task registry sits above the planners (tasks import planners).
        from diffplan.distributed import resolve_device
        from diffplan.tasks.planning import planner_from_checkpoint

        return planner_from_checkpoint(
            path, guide=guide, device=str(resolve_device(str(device))), value=value,
            critic=critic, inverse_dynamics=inverse_dynamics, **settings,
        )  # fmt: skip

    # ----- episode bookkeeping ---------------------------------------------------------------

    def reset(self, env_indices: list[int] | None = None) -> None:
        """Forget the plans of the given environments (all when None); call between episodes."""
        if env_indices is None or self._since_plan is None:
            self._plans = self._plans_normalized = self._since_plan = self._episode_steps = None
            self.guide.reset()
            return
        slots = [k for k in env_indices if k < len(self._since_plan)]  # others start fresh anyway
        self._since_plan[slots] = -1  # forces a new plan for those envs
        self._episode_steps[slots] = 0

    # ----- planning --------------------------------------------------------------------------

    def _check_observation(self, observation) -> tuple[torch.Tensor, bool]:
        obs = torch.as_tensor(np.asarray(observation, dtype=np.float32), device=self.device)
        single = obs.dim() == 1
        obs = obs[None] if single else obs
        if obs.dim() != 2 or obs.shape[-1] != self.spec.obs_dim:
            raise ValueError(
                f"observation has shape {tuple(np.shape(observation))}; this model plans over "
                f"obs_dim={self.spec.obs_dim} (give (obs_dim,) or (n_envs, obs_dim), flattened "
                f"the way the training data was)"
            )
        if not torch.isfinite(obs).all():
            raise ValueError("observation contains NaN or inf")
        return obs, single

    def plan(
        self,
        observation,
        goal=None,
        warm_start_from: torch.Tensor | None = None,
        episode_step=None,
    ) -> Plan:
        """Sample and rank candidates for each env; observation (obs_dim,) or (E, obs_dim).

        warm_start_from: (E, H, D) normalized plans to start from (the MPC loop passes the
        shifted previous plans when warm starts are on).
        episode_step: (E,) env steps since each env's episode began (for guides that plan
        against the clock, e.g. `Goal(arrival="first-plan")`); the MPC loop passes it.
        """
        obs, _ = self._check_observation(observation)
        n_envs, n_cand = len(obs), self.n_candidates
        goals = None
        if goal is not None:
            goals = torch.as_tensor(np.asarray(goal, dtype=np.float32), device=self.device)
            goals = goals.reshape(-1, goals.shape[-1]).expand(n_envs, -1)
        ctx = GuideContext(
            spec=self.spec,
            normalizer=self.normalizer,
            n_envs=n_envs,
            n_candidates=n_cand,
            observation=obs,
            goal=goals,
            episode_step=None
            if episode_step is None
            else torch.as_tensor(np.asarray(episode_step), device=self.device).reshape(-1),
            return_range=self.return_range,
            position_dims=self.position_dims,
            velocity_dims=self.velocity_dims,
            device=self.device,
        )
        warm = None
        if warm_start_from is not None:
            warm = warm_start_from.repeat_interleave(n_cand, dim=0)
        samples = self.diffusion.sample(
            n_envs * n_cand,
            guide=self.guide,
            ctx=ctx,
            sampler=self.sampler,
            steps=self.sampling_steps,
            eta=self.eta,
            warm_start=warm,
            warm_start_t=self.warm_start_t if warm is not None else None,
            generator=self.generator,
            temperature=self.temperature,
        )
        plans = self.normalizer.unnormalize(samples.x)
        known = self.guide.inpaint(ctx)  # restore fixed entries exactly (no round-off) in env units
        if known is not None:
            plans = known.apply(plans)
        scores = self.guide.score(plans, ctx)
        if scores is not None:
            best_index = scores.view(n_envs, n_cand).argmax(dim=1)
        else:
            best_index = torch.zeros(n_envs, dtype=torch.long, device=self.device)
        rows = torch.arange(n_envs, device=self.device) * n_cand + best_index
        kept_ctx = dataclasses.replace(ctx, n_candidates=1)
        sampled = chosen = plans[rows]
        if self.elite > 1:
            chosen = self._elite_actions(plans.view(n_envs, n_cand, *plans.shape[1:]), scores,
                                         chosen)  # fmt: skip
        best = self.guide.finalize(chosen, kept_ctx)
        best_normalized = samples.x[rows]
        if best is not sampled:  # edited: warm starts continue from the edit
            best_normalized = self.normalizer.normalize(best)
        # Diagnostics are per plan and reported for the kept plans only: evaluate just those
        # (a value guide's diagnostics rerun its network; on E plans rather than E * N).
        diagnostics = self.guide.diagnostics(best, kept_ctx)
        plan = Plan(
            candidates=plans.view(n_envs, n_cand, *plans.shape[1:]),
            scores=None if scores is None else scores.view(n_envs, n_cand),
            best=best,
            best_normalized=best_normalized,
            best_index=best_index,
            diagnostics=diagnostics,
        )
        self.last_plan = plan
        return plan

    def _elite_actions(self, candidates, scores, chosen: torch.Tensor) -> torch.Tensor:
        """`chosen` (E, H, D) with its actions replaced by the mean actions of the `elite`
        best-scored candidates (E, N, H, D) of each env (the first ones when unscored)."""
        n_envs, n_cand = candidates.shape[:2]
        if scores is None:
            top = torch.arange(self.elite, device=self.device).expand(n_envs, -1)
        else:
            top = scores.view(n_envs, n_cand).topk(self.elite, dim=1).indices
        elite = candidates[torch.arange(n_envs, device=self.device)[:, None], top]
        mean_actions = self.spec.actions(elite).mean(dim=1)
        return self.spec.join(mean_actions, self.spec.observations(chosen))

    def _shifted(self, plans: torch.Tensor, since: np.ndarray) -> torch.Tensor:
        """Plans (E, H, D) moved forward by the env steps executed since, last step repeated.

        A strided plan moved by a part of its stride is interpolated between planned steps
        (replanning every env step on a stride-4 plan would otherwise restart from a plan up
        to 3 env steps behind the state, and the new plan lags)."""
        shift = torch.as_tensor(since / self.spec.stride, dtype=torch.float32, device=self.device)
        position = torch.arange(self.spec.horizon, device=self.device)[None] + shift[:, None]
        return plan_at(plans, position)

    def act(self, observation, goal=None, env_indices=None) -> np.ndarray:
        """The action for each env, (act_dim,) or (R, act_dim), env units.

        env_indices: (R,) which env slots the R rows are (a loop whose finished envs drop
        out passes the live ones); default: rows are slots 0..R-1, and a change in R starts
        fresh plans for all.
        """
        obs, single = self._check_observation(observation)
        rows = len(obs)
        goal = self._check_goal(goal, rows)
        if goal is not None and not self._warned_goal:
            if not any(getattr(g, "uses_goal", False) for g in self.guide.guides):
                self._warned_goal = True
                names = ", ".join(type(g).__name__ for g in self.guide.guides)
                warnings.warn(
                    f"the planner was given a goal but none of its guides ({names}) reads it: "
                    "it plans without the goal; add guides.Goal(...) (or the task's goal guide)",
                    stacklevel=2,
                )
        if env_indices is None:
            slots = np.arange(rows)
            if self._since_plan is None or len(self._since_plan) != rows:
                self._grow(rows, fresh=True)
        else:
            slots = np.asarray(env_indices, dtype=np.int64).reshape(-1)
            if len(slots) != rows or (slots < 0).any() or len(set(slots.tolist())) != rows:
                raise ValueError(
                    f"env_indices must name {rows} distinct slots >= 0 (one per observation row)"
                )
            self._grow(int(slots.max()) + 1, fresh=False)
        since = self._since_plan[slots]
        due = since < 0
        if self.replan_every > 0:
            due |= since >= self.replan_every
        self.replanned = due.copy()
        if due.any():
            self._replan(obs, goal, slots, np.flatnonzero(due))
        offsets = torch.as_tensor(self._since_plan[slots], device=self.device)
        index = torch.as_tensor(slots, device=self.device)
        plans = self._plans[index]
        if self.action_mode == "diffused":
            step = (offsets // self.spec.stride).clamp(max=self.spec.horizon - 1)
            actions = self.spec.actions(plans)[torch.arange(rows), step]
        elif self.action_mode == "inverse-dynamics":
            # The planned state one stride after the current one (the model's step pair).
            step = (offsets // self.spec.stride + 1).clamp(max=self.spec.horizon - 1)
            target = self.spec.observations(plans)[torch.arange(rows), step]
            actions = self.inverse_dynamics(obs, target)
        else:
            actions = self.tracker(self.spec.observations(plans), obs, offsets, self.spec.stride)
        if self.action_filter is not None:
            actions = self.action_filter(obs, actions)
        self._since_plan[slots] += 1
        self._episode_steps[slots] += 1
        actions = actions.detach().cpu().numpy()
        if not np.isfinite(actions).all():
            names = ", ".join(type(g).__name__ for g in self.guide.guides)
            raise ValueError(
                f"the planner produced a non-finite action (guides: {names}); check the guides' "
                "settings (scales, targets) and that observations lie in the data's range"
            )
        return actions[0] if single else actions

    def _check_goal(self, goal, rows: int):
        if goal is None:
            return None
        goal_arr = np.asarray(goal, dtype=np.float32)
        if goal_arr.ndim == 0:
            raise ValueError(
                "goal must be a vector (goal_dim,) or (n_envs, goal_dim), not a scalar"
            )
        if goal_arr.ndim == 2 and len(goal_arr) != rows:
            raise ValueError(
                f"got {len(goal_arr)} goals for {rows} observations; give one goal per row or one"
                " goal for all"
            )
        if goal_arr.ndim > 2:
            raise ValueError(
                f"goal has shape {goal_arr.shape}; expected (goal_dim,) or (E, goal_dim)"
            )
        return goal_arr

    def _grow(self, n_slots: int, fresh: bool) -> None:
        """Per-slot state for `n_slots` env slots; `fresh` forgets every slot's plan."""
        if fresh or self._since_plan is None:
            self._since_plan = np.full(n_slots, -1)
            self._episode_steps = np.zeros(n_slots, dtype=np.int64)
            self._plans = self._plans_normalized = None
            old = 0
        else:
            old = len(self._since_plan)
            if n_slots <= old:
                return
            self._since_plan = np.concatenate([self._since_plan, np.full(n_slots - old, -1)])
            self._episode_steps = np.concatenate(
                [self._episode_steps, np.zeros(n_slots - old, dtype=np.int64)]
            )
        shape = (n_slots, self.spec.horizon, self.spec.transition_dim)
        plans = torch.zeros(shape, device=self.device)
        plans_normalized = torch.zeros(shape, device=self.device)
        if self._plans is not None and old:
            plans[:old], plans_normalized[:old] = self._plans, self._plans_normalized
        self._plans, self._plans_normalized = plans, plans_normalized

    def _replan(self, obs: torch.Tensor, goal, slots: np.ndarray, rows: np.ndarray) -> None:
        """New plans for observation `rows` (env slots `slots[rows]`)."""
        goal_sub = None
        if goal is not None:
            goal_sub = goal[rows] if goal.ndim > 1 else goal
        targets = slots[rows]
        index = torch.as_tensor(targets, device=self.device)
        warm = None
        since = self._since_plan[targets]
        if self.warm_start and (since >= 0).all():
            warm = self._shifted(self._plans_normalized[index], since)
        episode_step = self._episode_steps[targets]
        row_index = torch.as_tensor(rows, device=self.device)
        plan = self.plan(obs[row_index], goal_sub, warm_start_from=warm, episode_step=episode_step)
        self._plans[index] = plan.best
        self._plans_normalized[index] = plan.best_normalized
        self._since_plan[targets] = 0
