"""B6 learning curve: the default planner's score against the diffusion model's training steps.

    bash examples/b6_learning_curve.sh configs/b6-hopper-medium.yaml runs/b6/hopper-medium \
        "2000 4000 8000 16000" train.threads=1 train.device=cpu
    python examples/b6_learning_curve.py --run runs/b6/hopper-medium \
        --critic runs/b6/hopper-medium/critic.pt --episodes 20 \
        --peers runs/peers --out runs/b6/hopper-medium-curve.json \
        --plot docs/b6-hopper-medium-learning-curve.png

Every stage copy (RUN-step-N.pt) is evaluated with the planner its config ships (the `plan:`
section, ranked by `--critic`), on the same seeds; each result is added to the JSON as soon as
it is done (a rerun skips the stages already there). The plot sets the curve against the data,
the behaviour policy's mean action (`--behaviour` JSON of examples/b6_locomotion.py) and the
d3rlpy peers' best and last checkpoints (`--peers`: examples/peers_d3rlpy.py results).
"""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path


def stage_files(run: Path) -> dict[int, Path]:
    """{training step: checkpoint copy} of RUN-step-N.pt files beside the run folder."""
    found = {}
    for path in run.parent.glob(f"{run.name}-step-*.pt"):
        m = re.fullmatch(rf"{re.escape(run.name)}-step-(\d+)\.pt", path.name)
        if m:
            found[int(m.group(1))] = path
    return dict(sorted(found.items()))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="the run folder whose stage copies to evaluate")
    p.add_argument("--critic", default=None, help="critic file (default: the config's plan)")
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--n-envs", type=int, default=10)
    p.add_argument("--seed", type=int, default=123)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", required=True, help="JSON (resumed if it exists)")
    p.add_argument("--plot", default=None)
    p.add_argument("--peers", default=None, help="folder of peers_d3rlpy.py results")
    p.add_argument("--behaviour", default=None, help="b6_locomotion.py JSON with behaviour-mean")
    p.add_argument("overrides", nargs="*", help="plan.* settings for every stage")
    args = p.parse_args()

    import torch

    from diffplan.checkpoint import load_checkpoint
    from diffplan.tasks import task_for
    from diffplan.tasks.planning import evaluate_checkpoint, evaluation_config

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    report = json.loads(out.read_text()) if out.exists() else {"stages": {}}
    stages = stage_files(Path(args.run))
    if not stages:
        p.error(f"no {args.run}-step-N.pt files: run examples/b6_learning_curve.sh first")
    for step, path in stages.items():
        if str(step) in report["stages"]:
            continue
        loaded = load_checkpoint(path)
        task = task_for(loaded.config)
        task.check_model(loaded)
        settings = evaluation_config(loaded, args.overrides).plan
        result = evaluate_checkpoint(
            loaded, task, settings=settings, critic=args.critic, episodes=args.episodes,
            n_envs=min(args.n_envs, args.episodes), seed=args.seed, progress=False,
        )  # fmt: skip
        print(f"step {step}: " + result.format_table().splitlines()[2].strip(), flush=True)
        report["stages"][str(step)] = {**result.to_dict(), "checkpoint": str(path)}
        report["planner"] = vars(settings)
        tmp = out.with_suffix(".tmp")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(report, indent=1))
        os.replace(tmp, out)
    if args.plot:
        plot_curve(report, args.plot, args.peers, args.behaviour)
        print(f"plot: {args.plot}")


def _d4rl(result: dict) -> tuple[float, float]:
    score = next(s for s in result["scores"] if s["label"] == "D4RL")
    return score["mean"], score["se"]


def plot_curve(report: dict, path: str, peers: str | None, behaviour: str | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [int(s) for s in report["stages"]]
    means, ses = zip(*(_d4rl(report["stages"][str(s)]) for s in steps), strict=True)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.errorbar(steps, means, yerr=ses, marker="o", capsize=3, color="C0",
                label="diffplan default planner (critic-ranked)")  # fmt: skip
    lines = []
    if behaviour and Path(behaviour).is_file():
        doc = json.loads(Path(behaviour).read_text())
        data = doc.get("behaviour_data", {}).get("score_D4RL")
        if data:
            lines.append(("behaviour data", data[0], "0.5", ":"))
        mean_action = doc.get("variants", {}).get("behaviour-mean")
        if mean_action:
            lines.append(("behaviour policy, mean action", _d4rl(mean_action)[0], "0.3", "--"))
    for i, algo in enumerate(("bc", "iql", "td3bc")):
        files = sorted(Path(peers).glob(f"*-{algo}.json")) if peers else []
        if files:
            doc = json.loads(files[0].read_text())
            best = doc.get("best") or {}
            if best:
                lines.append((f"d3rlpy {algo.upper()} (best checkpoint, step {best['step']})",
                              best["d4rl_mean"], f"C{i + 1}", "-."))  # fmt: skip
    for label, y, color, style in lines:
        ax.axhline(y, color=color, linestyle=style, linewidth=1.2, label=label)
    ax.set_xscale("log", base=2)
    ax.set_xticks(steps, [f"{s // 1000}k" for s in steps])
    ax.set_xlabel("diffusion model training steps (batch 64)")
    ax.set_ylabel("D4RL-normalized return")
    episodes = report["stages"][str(steps[0])]["episodes"]
    ax.set_title(f"hopper-medium (made here): score vs training budget, {episodes} episodes each")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
