"""B6: value-guided planners on a locomotion dataset, set against the data they learned from.

    python examples/b6_locomotion.py --checkpoint runs/b6/hopper-medium/last.pt \
        --value runs/b6/hopper-medium/value.pt \
        [--states-only runs/b6/hopper-medium-so/last.pt --states-only-value .../value.pt] \
        --episodes 50 --diffuser-episodes 10 --out runs/b6/hopper-medium.json

Each variant's result is added to the JSON as soon as it finishes, and variants already in the
file are skipped on a rerun (a killed run resumes; nothing is overwritten). The plot shows each
variant's per-episode returns against the behaviour data's mean return.
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")  # headless rendering for --gif (before mujoco loads)

import argparse
import json
import math
from pathlib import Path

import numpy as np

from diffplan.checkpoint import load_checkpoint
from diffplan.tasks import task_for
from diffplan.tasks.evaluation import mean_se
from diffplan.tasks.planning import evaluate_checkpoint, evaluation_config
from diffplan.trainer import load_episodes

# name -> (model: joint | states-only, plan overrides, scorer: "value" | "critic" | None). The
# guided variants keep the checkpoint's guide scale and t_stopgrad: Diffuser's are per env (0.1
# and 2 on Hopper and Walker2d, 0.001 and 4 on HalfCheetah), and the B6 configs carry them.
# The critic variants rank by `--critic` (IQL's Q of each plan's first step; train-critic).
VARIANTS: dict[str, tuple[str, list[str], str | None]] = {
    "diffuser": ("joint", ["plan.sampler=ddpm", "plan.sampling_steps=20",
                           "plan.n_candidates=64"], "value"),
    "fast-guide": ("joint", ["plan.sampler=ddim", "plan.sampling_steps=5",
                             "plan.n_candidates=16"], "value"),
    "fast-rank": ("joint", ["plan.sampler=ddim", "plan.sampling_steps=5",
                            "plan.n_candidates=16", "plan.value_scale=0"], "value"),
    "rank-64": ("joint", ["plan.sampler=ddim", "plan.sampling_steps=5",
                          "plan.n_candidates=64", "plan.value_scale=0"], "value"),
    "warm-rank": ("joint", ["plan.sampler=ddim", "plan.sampling_steps=3",
                            "plan.warm_start=true", "plan.warm_start_t=5",
                            "plan.n_candidates=16", "plan.value_scale=0"], "value"),
    "unguided": ("joint", ["plan.sampler=ddim", "plan.sampling_steps=5",
                           "plan.n_candidates=1"], None),
    "states-only-id-rank": ("states-only", ["plan.sampler=ddim", "plan.sampling_steps=5",
                                            "plan.n_candidates=16", "plan.value_scale=0",
                                            "plan.action_mode=inverse-dynamics"], "value"),
    "critic-rank": ("joint", ["plan.sampler=ddim", "plan.sampling_steps=5",
                              "plan.n_candidates=16", "plan.value_scale=0"], "critic"),
    "critic-rank-64": ("joint", ["plan.sampler=ddim", "plan.sampling_steps=5",
                                 "plan.n_candidates=64", "plan.value_scale=0"], "critic"),
    "critic-warm-n8": ("joint", ["plan.sampler=ddim", "plan.sampling_steps=2",
                                 "plan.warm_start=true", "plan.warm_start_t=5",
                                 "plan.n_candidates=8", "plan.value_scale=0"], "critic"),
    "critic-warm-n16": ("joint", ["plan.sampler=ddim", "plan.sampling_steps=2",
                                  "plan.warm_start=true", "plan.warm_start_t=5",
                                  "plan.n_candidates=16", "plan.value_scale=0"], "critic"),
    "critic-ddim2-n16": ("joint", ["plan.sampler=ddim", "plan.sampling_steps=2",
                                   "plan.n_candidates=16", "plan.value_scale=0"], "critic"),
    "critic-warm-n16-e4": ("joint", ["plan.sampler=ddim", "plan.sampling_steps=2",
                                     "plan.warm_start=true", "plan.warm_start_t=5",
                                     "plan.n_candidates=16", "plan.elite=4",
                                     "plan.value_scale=0"], "critic"),
    "critic-warm-n8-e4": ("joint", ["plan.sampler=ddim", "plan.sampling_steps=2",
                                    "plan.warm_start=true", "plan.warm_start_t=5",
                                    "plan.n_candidates=8", "plan.elite=4",
                                    "plan.value_scale=0"], "critic"),
    "critic-warm-n16-e8": ("joint", ["plan.sampler=ddim", "plan.sampling_steps=2",
                                     "plan.warm_start=true", "plan.warm_start_t=5",
                                     "plan.n_candidates=16", "plan.elite=8",
                                     "plan.value_scale=0"], "critic"),
    "critic-warm-n32-e8": ("joint", ["plan.sampler=ddim", "plan.sampling_steps=2",
                                     "plan.warm_start=true", "plan.warm_start_t=5",
                                     "plan.n_candidates=32", "plan.elite=8",
                                     "plan.value_scale=0"], "critic"),
    "critic-warm10-ddim3-n16-e4": ("joint", ["plan.sampler=ddim", "plan.sampling_steps=3",
                                             "plan.warm_start=true", "plan.warm_start_t=10",
                                             "plan.n_candidates=16", "plan.elite=4",
                                             "plan.value_scale=0"], "critic"),
    "critic-warm-ddim3-n16-e4": ("joint", ["plan.sampler=ddim", "plan.sampling_steps=3",
                                           "plan.warm_start=true", "plan.warm_start_t=5",
                                           "plan.n_candidates=16", "plan.elite=4",
                                           "plan.value_scale=0"], "critic"),
    "critic-warm-n16-e4-t05": ("joint", ["plan.sampler=ddim", "plan.sampling_steps=2",
                                         "plan.warm_start=true", "plan.warm_start_t=5",
                                         "plan.n_candidates=16", "plan.elite=4",
                                         "plan.temperature=0.5", "plan.value_scale=0"],
                               "critic"),
    "critic-rank-e4-t05": ("joint", ["plan.sampler=ddim", "plan.sampling_steps=5",
                                     "plan.n_candidates=16", "plan.elite=4",
                                     "plan.temperature=0.5", "plan.value_scale=0"], "critic"),
    "critic-rank-e4": ("joint", ["plan.sampler=ddim", "plan.sampling_steps=5",
                                 "plan.n_candidates=16", "plan.elite=4",
                                 "plan.value_scale=0"], "critic"),
    # No scores: the mean action of N samples (the model's own noise averaged out, no critic).
    "mean-of-16": ("joint", ["plan.sampler=ddim", "plan.sampling_steps=2",
                             "plan.warm_start=true", "plan.warm_start_t=5",
                             "plan.n_candidates=16", "plan.elite=16"], None),
}  # fmt: skip


class MeanActionPolicy:
    """The behaviour policy that made the data, acting with its mean action (no sampling
    noise): a peer that shows how much of a planner's gain is only the dropped noise."""

    description = "behaviour policy, mean action"

    def __init__(self, policy):
        self.policy = policy

    def reset(self, env_indices=None) -> None:
        pass

    def act(self, observations, goals=None, env_indices=None):
        return self.policy.act(observations, deterministic=True)


def evaluate_behaviour_mean(config, task, episodes: int, n_envs: int, seed: int):
    """The shipped policy of the dataset's level (diffplan/<env>-<level>-v0; medium for the
    medium-replay and medium-expert mixes) with its mean action."""
    from diffplan.tasks.evaluation import evaluate_policy
    from diffplan.tasks.locomotion.datasets import load_level_policy

    level = str(config.data.dataset).split("-", 1)[1].rsplit("-v", 1)[0]
    level = "medium" if level.startswith("medium") else level
    policy = load_level_policy(task.env, level)
    return evaluate_policy(
        MeanActionPolicy(policy), task, episodes=episodes, seed=seed, n_envs=n_envs,
        progress=False,
    )  # fmt: skip


def behaviour_data(config, task) -> dict:
    """Mean return (± SE) of the dataset's complete episodes, normalized like the planners."""
    episodes = load_episodes(config, keep_actions=True)
    returns = episodes.episode_returns()
    ends = episodes.episode_starts + episodes.lengths - 1
    complete = episodes.terminations[ends] | (episodes.lengths >= 1000)
    out = {"episodes": int(len(returns)), "complete_episodes": int(complete.sum())}
    r = returns[complete] if complete.any() else returns
    out["return_mean"], out["return_se"] = mean_se(r)
    for refs in task.refs():
        out[f"score_{refs.label}"] = mean_se(refs.normalize(r))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="joint [action | state] model")
    p.add_argument("--value", default=None, help="value net (the value variants)")
    p.add_argument("--critic", default=None, help="critic (the critic-* variants; train-critic)")
    p.add_argument("--states-only", default=None, help="states-only model (inverse.pt beside)")
    p.add_argument("--states-only-value", default=None)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--episodes", type=int, default=50)
    p.add_argument("--diffuser-episodes", type=int, default=10, help="Diffuser's recipe is slow")
    p.add_argument("--n-envs", type=int, default=10)
    p.add_argument("--seed", type=int, default=123)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", required=True, help="JSON (resumed if it exists)")
    p.add_argument("--plot", default=None)
    p.add_argument("--gif", default=None, help="GIF of episode 0 with the best fast variant")
    p.add_argument(
        "--merge",
        nargs="*",
        default=[],
        help="other runs' JSON files whose variants to add "
        "(variants evaluated in parallel processes)",
    )
    args = p.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    report = json.loads(out.read_text()) if out.exists() else {"variants": {}}
    joint = load_checkpoint(args.checkpoint)
    task = task_for(joint.config)
    task.check_model(joint)  # also reads the dataset's own refs from its metadata
    if "behaviour_data" not in report or "score_dataset" not in report["behaviour_data"]:
        report["behaviour_data"] = behaviour_data(joint.config, task)
        report["dataset"] = joint.config.data.dataset
        report["checkpoint"] = {"path": args.checkpoint, "step": joint.step}
    models = {"joint": (joint, {"value": args.value, "critic": args.critic})}
    if args.states_only:
        so = load_checkpoint(args.states_only)
        models["states-only"] = (so, {"value": args.states_only_value, "critic": None})
    for other in args.merge:
        for name, entry in json.loads(Path(other).read_text())["variants"].items():
            report["variants"].setdefault(name, entry)
    names = list(filter(None, args.variants.split(",")))
    unknown = [n for n in names if n not in VARIANTS and n != "behaviour-mean"]
    if unknown:
        p.error(f"unknown variants {unknown}; known: behaviour-mean, {', '.join(VARIANTS)}")
    if "behaviour-mean" in names and "behaviour-mean" not in report["variants"]:
        result = evaluate_behaviour_mean(
            joint.config, task, args.episodes, min(args.n_envs, args.episodes), args.seed
        )
        print(result.format_table(), flush=True)
        report["variants"]["behaviour-mean"] = {**result.to_dict(), "model": "behaviour policy"}
        _write(out, report)
    for name in names:
        if name == "behaviour-mean":
            continue
        kind, overrides, scorer = VARIANTS[name]
        if name in report["variants"] or kind not in models:
            continue
        loaded, files = models[kind]
        if scorer is not None and files[scorer] is None:
            print(f"skipping {name}: it needs --{scorer}" if kind == "joint" else
                  f"skipping {name}: it needs --states-only-{scorer}")  # fmt: skip
            continue
        episodes = args.diffuser_episodes if name == "diffuser" else args.episodes
        task = task_for(loaded.config)
        task.check_model(loaded)
        result = evaluate_checkpoint(
            loaded,
            task,
            settings=evaluation_config(loaded, overrides).plan,
            value=files["value"] if scorer == "value" else None,
            critic=files["critic"] if scorer == "critic" else None,
            episodes=episodes,
            n_envs=min(args.n_envs, episodes),
            seed=args.seed,
        )
        print(result.format_table(), flush=True)
        entry = result.to_dict()
        entry.update(overrides=overrides, model=kind, model_step=loaded.step)
        report["variants"][name] = entry
        _write(out, report)
    _write(out, report)
    print(format_table(report))
    if args.gif:
        from diffplan.tasks.planning import build_planner
        from diffplan.tasks.render import record_episode

        fast = {k: v for k, v in report["variants"].items() if k in VARIANTS and k != "diffuser"}
        best = max(fast, key=lambda k: fast[k]["scores"][0]["mean"])
        kind, overrides, scorer = VARIANTS[best]
        loaded, files = models[kind]
        planner = build_planner(
            loaded, task_for(loaded.config), evaluation_config(loaded, overrides).plan,
            value=files["value"] if scorer == "value" else None,
            critic=files["critic"] if scorer == "critic" else None,
        )  # fmt: skip
        info = record_episode(planner, task_for(loaded.config), args.gif, seed=args.seed)
        print(f"gif: {args.gif} ({best}, episode 0: return {info['return']:.0f}, "
              f"{info['steps']} steps)")  # fmt: skip
    if args.plot:
        from diffplan.tasks.plots import plot_returns

        data = report["behaviour_data"]
        plot_returns(
            {k: v["returns"] for k, v in report["variants"].items()},
            args.plot,
            title=f"{report['dataset']}: per-episode returns",
            reference=("behaviour data mean", data["return_mean"]),
        )


def _write(out: Path, report: dict) -> None:
    """Atomically: a killed run keeps the variants it finished."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=1))
    os.replace(tmp, out)


def format_table(report: dict) -> str:
    data = report["behaviour_data"]
    d4rl = data.get("score_D4RL", (math.nan, math.nan))
    lines = [
        f"{'variant':<22}{'episodes':>9}{'D4RL score':>16}{'dataset refs':>16}{'length':>8}"
        f"{'ms/decision':>13}",
        f"{'behaviour data':<22}{data['complete_episodes']:>9}{_pair(d4rl):>16}"
        f"{_pair(data.get('score_dataset')):>16}",
    ]
    for name, v in report["variants"].items():
        scores = {s["label"]: s for s in v["scores"]}
        d = scores["D4RL"]
        ds = scores.get("dataset")
        lines.append(
            f"{name:<22}{v['episodes']:>9}{_pair((d['mean'], d['se'])):>16}"
            f"{_pair(None if ds is None else (ds['mean'], ds['se'])):>16}"
            f"{np.mean(v['lengths']):>8.0f}{1e3 * v['act_time_per_decision_s']:>13.1f}"
        )
    return "\n".join(lines)


def _pair(p) -> str:
    if p is None:
        return "-"
    mean, se = (math.nan if x is None else x for x in p)
    return f"{mean:.1f} ± {se:.1f}"


if __name__ == "__main__":
    main()
