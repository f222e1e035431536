"""The `diffplan` command: one function per subcommand, registered in `SUBCOMMANDS`.

To add a subcommand, write `add_<name>_args(parser)` and `cmd_<name>(args) -> int`, and append
`Subcommand(...)` to `SUBCOMMANDS`. Every expected failure (a `DiffplanError`, a missing input
file, a bad value) ends as one line `diffplan: error: ...` on stderr and exit code 1; set
DIFFPLAN_DEBUG=1 to see the traceback instead. Inputs are checked (`diffplan.preflight`)
before torch is imported, so that `--help` and a wrong path answer at once.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from diffplan.errors import DiffplanError, DiffplanWarning
from diffplan.files import write_json_atomic

# ----------------------------------------------------------------------------- argument types


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (a count of episodes, steps, ...)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def file_path(text: str) -> str:
    """An argparse type: a path to write a file to, so not an existing directory."""
    if Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a directory; give a file path")
    return text


# ----------------------------------------------------------------------------- train


def add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="YAML config (see configs/)")
    p.add_argument("--out", default=None, help="run directory (default: runs/<config name>)")
    p.add_argument("--resume", action="store_true", help="continue from <out>/last.pt")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    p.add_argument("--device", default=None, help="cpu | cuda | auto (default: train.device)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. train.steps=500")


def cmd_train(args: argparse.Namespace) -> int:
    from diffplan.config import load_config
    from diffplan.preflight import check_dataset_available, check_run_dir, default_run_dir

    config = load_config(args.config, args.overrides)
    out = Path(args.out) if args.out else default_run_dir(config.name)
    main_rank = int(os.environ.get("RANK", "0")) == 0
    if main_rank:
        check_run_dir(out, args.resume, args.overwrite)
    check_dataset_available(config.data)
    if main_rank and config.data.source == "minari" and config.data.root is None:
        _print_default_datasets_root()

    task = None
    if config.task.type or config.task.env or config.task.options:
        from diffplan.tasks import task_for

        task = task_for(config)  # an unknown type, env or option: one line, before training

    from diffplan.trainer import train  # torch: only once the inputs are known to be good

    path = train(
        config,
        out,
        resume=args.resume,
        device=args.device,
        progress=not args.no_progress,
        overwrite=args.overwrite,
        check_data=None if task is None else task.check_data,
    )
    if main_rank:
        print(f"checkpoint: {path}")
    return 0


def _print_default_datasets_root() -> None:
    """Say where Minari datasets are looked for when the user has not said it."""
    from diffplan.data.minari_source import datasets_root

    if not os.environ.get("MINARI_DATASETS_PATH"):
        root, _ = datasets_root()
        print(f"datasets root: {root} (the default; set MINARI_DATASETS_PATH to change it)")


# ----------------------------------------------------------------------------- sample


def add_sample_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--n", type=int, default=16, help="number of trajectories")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: all)")
    p.add_argument("--sampler", choices=["ddim", "ddpm"], default="ddpm")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    p.add_argument(
        "--plot",
        nargs="?",
        const="",
        default=None,
        metavar="PNG",
        help="plot the first two obs dims (default file: samples.png next to the checkpoint)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --plot file")
    p.add_argument(
        "--unconditional",
        action="store_true",
        help="do not condition on start states (and returns) of stored training windows",
    )


def cmd_sample(args: argparse.Namespace) -> int:
    from diffplan.preflight import check_input_file, check_output_file

    if args.n < 1:
        raise DiffplanError(f"--n must be >= 1, got {args.n}")
    if args.steps is not None and args.steps < 1:
        raise DiffplanError(f"--steps must be >= 1, got {args.steps}")
    check_input_file(args.checkpoint)
    if args.plot is not None:
        args.plot = args.plot or str(Path(args.checkpoint).parent / "samples.png")
        inputs = [(args.checkpoint, "the checkpoint")]
        check_output_file(args.plot, args.overwrite, "--plot", inputs, example="samples.png")

    import torch

    from diffplan.checkpoint import load_checkpoint
    from diffplan.distributed import resolve_device

    model = load_checkpoint(args.checkpoint, device=resolve_device(args.device))
    gen = torch.Generator().manual_seed(args.seed)
    inpaint, cond = (None, None) if args.unconditional else model.example_conditions(args.n, gen)
    dev_gen = torch.Generator(device=model.device).manual_seed(args.seed)
    samples = model.diffusion.sample(
        args.n,
        inpaint=inpaint,
        sampler=args.sampler,
        steps=args.steps,
        cond=cond,
        generator=dev_gen,
    )
    plans = model.normalizer.unnormalize(samples.x).cpu()  # (N, H, D) env units
    spec = model.spec
    obs, act = spec.observations(plans), spec.actions(plans)
    print(
        f"sampled {args.n} plans with {args.sampler} ({len(model.diffusion.timesteps(args.steps))}"
        f" steps) from {args.checkpoint} (step {model.step})"
    )
    print(
        f"plans {tuple(plans.shape)}  observations {tuple(obs.shape)}  actions {tuple(act.shape)}"
    )
    print(f"{'dim':<8}{'mean':>10}{'std':>10}{'min':>10}{'max':>10}")
    for name, part in (("obs", obs), ("act", act)):
        flat = part.reshape(-1, part.shape[-1])
        for d in range(flat.shape[-1]):
            col = flat[:, d]
            print(
                f"{name}[{d}]".ljust(8)
                + f"{col.mean():10.4f}{col.std():10.4f}{col.min():10.4f}{col.max():10.4f}"
            )
    if args.plot:
        _plot_paths(obs, args.plot, title=f"{model.config.name}: {args.n} sampled plans")
        print(f"plot: {args.plot}")
    return 0


def _plot_paths(obs, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    for i, plan in enumerate(obs):
        y = plan[:, 1] if plan.shape[-1] > 1 else plan[:, 0] * 0
        ax.plot(plan[:, 0], y, lw=1, alpha=0.7, label="sampled plans" if i == 0 else None)
        ax.plot(plan[0, 0], y[0], "k.", ms=5, label="start" if i == 0 else None)
        ax.plot(plan[-1, 0], y[-1], "kx", ms=4, label="end" if i == 0 else None)
    ax.set_xlabel("obs[0]")
    ax.set_ylabel("obs[1]" if obs.shape[-1] > 1 else "(one obs dim)")
    ax.set_title(title)
    ax.set_aspect("equal", adjustable="datalim")
    ax.legend(loc="best", fontsize=8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # atomic: never half a PNG
    try:
        fig.savefig(tmp, dpi=100, bbox_inches="tight", format=path.suffix[1:] or "png")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        plt.close(fig)


# ----------------------------------------------------------------------------- info


def add_info_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True)


def cmd_info(args: argparse.Namespace) -> int:
    from diffplan.preflight import check_input_file

    check_input_file(args.checkpoint)

    from diffplan.checkpoint import load_checkpoint
    from diffplan.networks import count_parameters

    model = load_checkpoint(args.checkpoint)
    c, s = model.config, model.spec
    meta = model.raw.get("meta", {})
    print(f"checkpoint   {model.path}  (format v{model.raw['version']}, step {model.step})")
    print(f"run          {c.name}  data: {c.data.source} {c.data.dataset!r} ({c.data.normalizer})")
    print(
        f"spec         obs_dim {s.obs_dim}  act_dim {s.act_dim}  horizon {s.horizon}  "
        f"stride {s.stride}  (plans span {(s.horizon - 1) * s.stride + 1} env steps)"
    )
    print(
        f"model        {type(model.diffusion.model).__name__} ({c.model.type}) dim {c.model.dim} "
        + (
            f"mults {c.model.dim_mults} "
            if c.model.type == "unet"
            else f"depth {c.model.depth} heads {c.model.heads} "
        )
        + f"params {count_parameters(model.diffusion.model):,}  cond_dim {model.cond_dim}"
    )
    d = c.diffusion
    print(
        f"diffusion    T={d.n_timesteps} {d.schedule} predict {d.prediction}  "
        f"condition_steps {d.condition_steps}  clip {d.clip_denoised}"
    )
    t = c.train
    print(f"train        steps {t.steps}  batch {t.batch_size}  lr {t.lr}  ema {t.ema_decay}")
    if model.return_range is not None:
        print(f"returns      range {model.return_range[0]:.3f} .. {model.return_range[1]:.3f}")
    try:
        from diffplan.tasks import infer_task

        family, env, options = infer_task(c)
        extra = f"  options {options}" if options else ""
        print(f"task         {family} {env or '(from the dataset)'}{extra}  (diffplan evaluate)")
    except DiffplanError as e:
        print(f"task         unknown: {e}")
    p = c.plan
    print(
        f"plan         {p.mode} replan_every {p.replan_every}  {p.n_candidates} candidates  "
        f"{p.sampler} {p.sampling_steps} steps  actions {p.action_mode}"
    )
    _print_data_range(model)
    if meta:
        print(
            f"written by   torch {meta.get('torch')} on {meta.get('device')} "
            f"x{meta.get('world_size', 1)}  at {meta.get('saved_at')}"
        )
    return 0


def _print_data_range(model) -> None:
    """Per-dim range of the training data, read from the normalizer (env units)."""
    import torch

    norm, spec = model.normalizer, model.spec
    if norm.kind not in ("limits", "gaussian"):
        return
    lo, hi = norm.unnormalize(-torch.ones(norm.dim)), norm.unnormalize(torch.ones(norm.dim))
    kind = "min .. max" if norm.kind == "limits" else "mean -/+ 1 std"
    head = f"data range   ({kind}, env units)"
    print(head)
    names = [f"act[{i}]" for i in range(spec.act_dim)] + [f"obs[{i}]" for i in range(spec.obs_dim)]
    for name, a, b in zip(names, lo.tolist(), hi.tolist(), strict=True):
        print(f"  {name:<8} {a:10.3f} .. {b:10.3f}")


# ----------------------------------------------------------------------------- data / refs


def add_data_args(p: argparse.ArgumentParser) -> None:
    kinds = p.add_subparsers(dest="kind", required=True, metavar="KIND")
    pm = kinds.add_parser(
        "pointmaze",
        help="PointMaze dataset (BENCHMARKS.md procedure)",
        description=(
            "Generate a PointMaze Minari dataset by the reference procedure (BENCHMARKS.md)."
        ),
    )
    pm.add_argument("--maze", choices=["umaze", "medium", "large"], required=True)
    pm.add_argument("--dense", action="store_true", help="dense reward variant")
    pm.add_argument("--steps", type=int, default=1_000_000)
    pm.add_argument("--seed", type=int, default=123)
    pm.add_argument(
        "--id", default=None, help="Minari dataset id (default: diffplan/pointmaze-...)"
    )
    pm.add_argument("--root", default=None, help="datasets root (default: MINARI_DATASETS_PATH)")
    pm.add_argument("--overwrite", action="store_true")
    pm.add_argument("--no-progress", action="store_true")
    pm.set_defaults(data_run=_data_pointmaze)

    envs = ["halfcheetah", "hopper", "walker2d"]
    tp = kinds.add_parser(
        "train-policy",
        help="train a SAC behaviour policy (stable-baselines3)",
        description="Train (or continue) SAC on a locomotion env; snapshots + replay buffer.",
    )
    tp.add_argument("--env", choices=envs, required=True)
    tp.add_argument("--steps", type=int, default=1_000_000, help="env steps (default 1,000,000)")
    tp.add_argument("--seed", type=int, default=0)
    tp.add_argument("--out", default=None, help="run directory (default: runs/policies/<env>)")
    tp.add_argument("--snapshot-every", type=int, default=20_000, help="steps between snapshots")
    tp.add_argument("--no-progress", action="store_true")
    tp.set_defaults(data_run=_data_train_policy)

    ep = kinds.add_parser(
        "export-policy",
        help="export a snapshot of a SAC run as a medium/expert policy file",
        description=(
            "Copy a snapshot of a SAC run as policies/<env>-<level>.pt with its card (expert:"
            " the last snapshot; medium: return closest to a third of the expert's)."
        ),
    )
    ep.add_argument("--env", choices=envs, required=True)
    ep.add_argument("--level", choices=["medium", "expert"], required=True)
    ep.add_argument(
        "--run", dest="run_dir", default=None, help="SAC run directory (runs/policies/<env>)"
    )
    ep.add_argument("--step", type=int, default=None, help="snapshot step (default: by level)")
    ep.add_argument("--out", default=None, help="policy directory (default: the shipped one)")
    ep.add_argument("--episodes", type=int, default=100, help="episodes to measure the return")
    ep.add_argument("--overwrite", action="store_true", help="replace an existing policy file")
    ep.set_defaults(data_run=_data_export_policy)

    mj = kinds.add_parser(
        "mujoco",
        help="D4RL-style locomotion dataset (random/medium/.../medium-expert)",
        description="Generate a D4RL-style MuJoCo locomotion dataset (BENCHMARKS.md B6).",
    )
    mj.add_argument("--env", choices=envs, required=True)
    mj.add_argument(
        "--level",
        choices=["random", "medium", "medium-replay", "expert", "medium-expert"],
        required=True,
    )
    mj.add_argument(
        "--steps",
        type=int,
        default=None,
        help="steps (default 1,000,000; medium-expert 2,000,000; medium-replay: all rows)",
    )
    mj.add_argument("--seed", type=int, default=0)
    mj.add_argument(
        "--id", default=None, help="Minari dataset id (default: diffplan/<env>-<level>-v0)"
    )
    mj.add_argument("--root", default=None, help="datasets root (default: MINARI_DATASETS_PATH)")
    mj.add_argument("--format", choices=["minari", "d4rl"], default="minari", dest="fmt")
    mj.add_argument("--out", default=None, help="HDF5 file for --format d4rl")
    mj.add_argument("--policy-dir", default=None, help="policy files (default: the shipped ones)")
    mj.add_argument(
        "--run",
        dest="run_dir",
        default=None,
        help="SAC run dir for medium-replay (default: runs/policies/<env>)",
    )
    mj.add_argument(
        "--rerun",
        action="store_true",
        help="medium-replay: the --run is a rerun of the medium policy's SAC run (same seed) whose"
        " snapshot differs from the shipped file; use its replay buffer as it is (recorded)",
    )
    mj.add_argument("--n-envs", type=int, default=10, help="envs stepped in lockstep")
    mj.add_argument("--overwrite", action="store_true")
    mj.add_argument("--no-progress", action="store_true")
    mj.set_defaults(data_run=_data_mujoco)


def cmd_data(args: argparse.Namespace) -> int:
    from diffplan.runlock import RunLock

    with RunLock(_data_folder(args), f"data {args.kind}"):  # one writer per folder
        return args.data_run(args)


def _data_folder(args: argparse.Namespace) -> Path:
    """The folder a data command writes: the HDF5 file's folder, the policy run or policy
    folder, else the Minari datasets root."""
    if getattr(args, "fmt", None) == "d4rl" and args.out:
        return Path(args.out).parent
    if args.kind == "train-policy":
        return Path(args.out) if args.out is not None else Path("runs") / "policies" / args.env
    if args.kind == "export-policy":
        from diffplan.tasks.locomotion.datasets import policy_path

        return policy_path(args.env, args.level, args.out).parent
    from diffplan.data.minari_source import datasets_root

    return datasets_root(args.root)[0]


def _data_pointmaze(args: argparse.Namespace) -> int:
    from diffplan.tasks.pointmaze.envs import generate_pointmaze_dataset

    summary = generate_pointmaze_dataset(
        args.maze,
        dense=args.dense,
        steps=args.steps,
        seed=args.seed,
        dataset_id=args.id,
        root=args.root,
        progress=not args.no_progress,
        overwrite=args.overwrite,
    )
    for key, value in summary.items():
        print(f"{key:24s} {value}")
    return 0


def _data_train_policy(args: argparse.Namespace) -> int:
    from diffplan.tasks.locomotion.policy_training import train_policy

    out = args.out or str(Path("runs") / "policies" / args.env)
    run = train_policy(
        args.env,
        out,
        steps=args.steps,
        seed=args.seed,
        snapshot_every=args.snapshot_every,
        progress=not args.no_progress,
    )
    print(f"run: {run}")
    return 0


def _data_export_policy(args: argparse.Namespace) -> int:
    from diffplan.tasks.locomotion.datasets import card_path, default_run_dir, export_policy

    card = export_policy(
        args.run_dir or default_run_dir(args.env),
        args.level,
        step=args.step,
        out_dir=args.out,
        episodes=args.episodes,
        overwrite=args.overwrite,
        command=" ".join(["diffplan", *sys.argv[1:]]) if sys.argv[1:2] == ["data"] else None,
        env=args.env,
    )
    print(f"card: {card_path(card['env'], card['level'], args.out)}")
    return 0


def _data_mujoco(args: argparse.Namespace) -> int:
    from diffplan.tasks.locomotion.datasets import generate_mujoco_dataset

    if args.out and args.fmt != "d4rl":
        raise DiffplanError(
            "--out names the HDF5 file of --format d4rl; for Minari use --id/--root"
        )
    generate_mujoco_dataset(
        args.env,
        args.level,
        steps=args.steps,
        seed=args.seed,
        dataset_id=args.id,
        root=args.root,
        fmt=args.fmt,
        out=args.out,
        policy_dir=args.policy_dir,
        run_dir=args.run_dir,
        progress=not args.no_progress,
        overwrite=args.overwrite,
        n_envs=args.n_envs,
        command=" ".join(["diffplan", *sys.argv[1:]]) if sys.argv[1:2] == ["data"] else None,
        rerun=args.rerun,
    )
    return 0


def add_refs_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--env", choices=["pointmaze-umaze", "pointmaze-medium", "pointmaze-large"], required=True
    )
    p.add_argument("--dense", action="store_true")
    p.add_argument("--episodes", type=positive_int, default=100)
    p.add_argument("--seed", type=int, default=123)
    p.add_argument("--json", type=file_path, metavar="PATH", help="also write the refs as JSON")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")


def cmd_refs(args: argparse.Namespace) -> int:
    from diffplan.tasks.pointmaze.envs import measure_refs

    maze = args.env.split("-", 1)[1]
    if args.json and Path(args.json).exists() and not args.overwrite:
        raise FileExistsError(f"{args.json} exists; pass --overwrite to replace it")
    refs = measure_refs(maze, args.dense, episodes=args.episodes, seed=args.seed)
    if args.json:
        payload = {"env": args.env, "dense": args.dense, "command": " ".join(sys.argv), **refs}
        write_json_atomic(args.json, payload)
    print(f"{args.env} ({'dense' if args.dense else 'sparse'} reward)")
    for key, value in refs.items():
        print(f"{key:32s} {value:.3f}" if isinstance(value, float) else f"{key:32s} {value}")
    return 0


# ----------------------------------------------------------------------------- evaluate


# Shorthand flags for the most used plan settings; each is the same as `plan.<field>=value`.
PLAN_FLAGS: list[tuple[str, str, dict]] = [
    ("--planner", "mode", {"choices": ["mpc", "open-loop"]}),
    ("--candidates", "n_candidates", {"type": int}),
    ("--sampling-steps", "sampling_steps", {"type": int}),
    ("--sampler", "sampler", {"choices": ["ddim", "ddpm"]}),
    ("--replan-every", "replan_every", {"type": int}),
    ("--warm-start", "warm_start", {"action": argparse.BooleanOptionalAction}),
    ("--warm-start-t", "warm_start_t", {"type": int}),
    ("--action-mode", "action_mode", {"choices": ["track", "diffused", "inverse-dynamics"]}),
    ("--value-scale", "value_scale", {"type": float}),
]


def add_evaluate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True)
    p.add_argument(
        "--env",
        default=None,
        help="override the checkpoint's task: pointmaze-umaze|medium|large, hopper|walker2d|"
        "halfcheetah (or Hopper-v5 ...), or any registered gymnasium id",
    )
    p.add_argument("--dense", action="store_true", help="PointMaze: dense reward and refs")
    p.add_argument("--multi-task", action="store_true", help="PointMaze: random goal cell")
    p.add_argument("--value", default=None, metavar="FILE", help="value net (train-value)")
    p.add_argument(
        "--inverse-dynamics", default=None, metavar="FILE", help="default: inverse.pt beside it"
    )
    p.add_argument(
        "--critic", default=None, metavar="FILE", help="rank by this critic (default: plan.critic)"
    )
    p.add_argument("--episodes", type=int, default=None, help="default: task.episodes (100)")
    p.add_argument("--n-envs", type=int, default=None, help="envs planned in one batch (10)")
    p.add_argument("--seed", type=int, default=None, help="default: task.seed (123)")
    for flag, field, kwargs in PLAN_FLAGS:
        p.add_argument(flag, dest=f"plan_{field}", default=None, help=f"= plan.{field}", **kwargs)
    p.add_argument("--json", default=None, metavar="PATH", help="write the results as JSON")
    p.add_argument("--plot", default=None, metavar="PNG", help="plans and paths of 4 episodes")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: half the cores)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="plan.* / task.* settings, e.g. "
        "plan.n_candidates=64 plan.sampler=ddpm task.episodes=50",
    )


def cmd_evaluate(args: argparse.Namespace) -> int:
    for name in ("episodes", "n_envs"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    from diffplan.preflight import check_output_file, check_plot_path

    # Inputs are never outputs (not even with --overwrite), and a plot's format is checked
    # before the evaluation, not after it.
    inputs = [(args.checkpoint, "the checkpoint given as --checkpoint")]
    for flag in ("value", "critic", "inverse_dynamics"):
        if getattr(args, flag):
            inputs.append((getattr(args, flag), f"the file given as --{flag.replace('_', '-')}"))
    if args.json:
        check_output_file(args.json, args.overwrite, "--json", inputs, example="eval.json")
    if args.plot:
        check_plot_path(args.plot)
        check_output_file(args.plot, True, "--plot", inputs, example="eval.png")
        if args.json and Path(args.plot).resolve() == Path(args.json).resolve():
            raise DiffplanError(f"--plot and --json name the same file {args.json}")
    from diffplan.checkpoint import load_checkpoint
    from diffplan.distributed import resolve_device, set_cpu_threads
    from diffplan.tasks import task_for
    from diffplan.tasks.planning import evaluate_checkpoint, evaluation_config

    overrides = list(args.overrides)
    for _, field, _ in PLAN_FLAGS:
        value = getattr(args, f"plan_{field}")
        if value is not None:
            overrides.append(
                f"plan.{field}={str(value).lower() if isinstance(value, bool) else value}"
            )
    device = str(resolve_device(args.device))
    set_cpu_threads(args.threads)
    loaded = load_checkpoint(args.checkpoint, device=device)  # read once, used throughout
    config = evaluation_config(loaded, overrides)
    options = {}
    if args.dense:
        options["dense"] = True
    if args.multi_task:
        options["multi_task"] = True
    task = task_for(config, args.env, options)
    episodes = args.episodes or config.task.episodes
    if episodes > 10_000:  # say up front what was asked for (the bar's estimate comes later)
        limit = config.task.max_episode_steps or task.default_max_episode_steps or "the env's"
        warnings.warn(
            f"{episodes:,} episodes of up to {limit} env steps each is a long evaluation (the "
            "benchmarks use 50-100); the progress bar estimates the time left after the first "
            "episodes, and Ctrl-C stops it without results",
            DiffplanWarning,
            stacklevel=2,
        )

    def write_results(result) -> None:  # before the plot: a failed plot loses no results
        if args.json:
            payload = {
                **result.to_dict(),
                "planner": vars(config.plan),
                "checkpoint": args.checkpoint,
                "value": args.value,
                "critic": args.critic or config.plan.critic,
                "command": " ".join(sys.argv),
            }
            write_json_atomic(args.json, payload)

    result = evaluate_checkpoint(
        loaded,
        task,
        settings=config.plan,
        on_result=write_results,
        value=args.value,
        inverse_dynamics=args.inverse_dynamics,
        critic=args.critic,
        episodes=episodes,
        n_envs=args.n_envs or config.task.n_envs,
        seed=config.task.seed if args.seed is None else args.seed,
        plot=args.plot,
        progress=not args.no_progress,
        device=device,
        max_episode_steps=config.task.max_episode_steps,
    )
    print(result.format_table())
    print(f"  planner               {result.policy}")
    if args.json:
        print(f"json: {args.json}")
    if args.plot:
        print(f"plot: {args.plot}")
    return 0


# ----------------------------------------------------------------------------- train-value


def add_train_value_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="the diffusion model's checkpoint")
    p.add_argument("--out", required=True, help="value checkpoint to write (e.g. RUN/value.pt)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--steps", type=int, default=None, help="default: value.steps of the config")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: half the cores)")
    p.add_argument("--no-progress", action="store_true")


def cmd_train_value(args: argparse.Namespace) -> int:
    return _train_for_checkpoint(args, "diffplan.value_training", "train_value", "value checkpoint")


def _train_for_checkpoint(args, module: str, function: str, label: str, **extra) -> int:
    """train-value and train-state-model: check the flags and paths before torch loads, pin the
    CPU threads, train `module.function(checkpoint, out, ...)`, print where it went."""
    import importlib

    from diffplan.preflight import check_value_paths

    for flag, value in (("--steps", args.steps), ("--batch-size", args.batch_size)):
        if value is not None and value < 1:
            raise DiffplanError(f"{flag} must be >= 1, got {value}")
    check_value_paths(args.checkpoint, args.out, args.overwrite)  # before any training

    from diffplan.distributed import set_cpu_threads

    set_cpu_threads(args.threads)  # torch's default (all cores) spin-waits on a busy machine
    from diffplan.runlock import RunLock

    train = getattr(importlib.import_module(module), function)
    with RunLock(Path(args.out).parent, args.command):  # one writer per folder
        path = train(
            args.checkpoint,
            args.out,
            steps=args.steps,
            batch_size=args.batch_size,
            seed=args.seed,
            device=args.device,
            progress=not args.no_progress,
            overwrite=args.overwrite,
            **extra,
        )
    print(f"{label}: {path}")
    return 0


# ----------------------------------------------------------------------------- train-critic


def add_train_critic_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="the diffusion model's checkpoint")
    p.add_argument(
        "--out", default=None, help="default: critic.pt beside the checkpoint (plan.critic)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--steps", type=int, default=None, help="default: critic.steps of the config")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: half the cores)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="critic.* settings, e.g. critic.expectile=0.9",
    )


def cmd_train_critic(args: argparse.Namespace) -> int:
    if args.out is None:  # an empty --out is an error (a folder), not the default
        args.out = str(Path(args.checkpoint).with_name("critic.pt"))
    for item in args.overrides:
        if not item.split("=", 1)[0].strip().startswith("critic."):
            raise DiffplanError(
                f"override '{item}': train-critic takes critic.* settings only "
                "(e.g. critic.expectile=0.9)"
            )
    return _train_for_checkpoint(
        args, "diffplan.critic", "train_critic", "critic", overrides=list(args.overrides)
    )


# ----------------------------------------------------------------------------- train-state-model


def add_train_state_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="the diffusion model's checkpoint")
    p.add_argument(
        "--kind",
        required=True,
        choices=("reward", "start-return"),
        help="reward: r(s') of arriving at a state (guides.HoldAtBest); start-return: an upper "
        "expectile of the window return from a state (a start-dependent return target)",
    )
    p.add_argument("--out", required=True, help="file to write (e.g. RUN/reward.pt)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--expectile", type=float, default=None, help="default: 0.5 reward, 0.9 return")
    p.add_argument(
        "--steps", type=int, default=20000, help="a few minutes on one core; rare states need them"
    )
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: half the cores)")
    p.add_argument("--no-progress", action="store_true")


def cmd_train_state_model(args: argparse.Namespace) -> int:
    return _train_for_checkpoint(
        args,
        "diffplan.state_models",
        "train_state_model",
        f"{args.kind} model",
        kind=args.kind,
        expectile=args.expectile,
    )


# ----------------------------------------------------------------------------- train-inverse


def add_train_inverse_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="a states-only diffusion checkpoint")
    p.add_argument("--out", default=None, help="default: inverse.pt beside the checkpoint")
    p.add_argument("--steps", type=int, default=5000)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: half the cores)")
    p.add_argument("--no-progress", action="store_true")


def cmd_train_inverse(args: argparse.Namespace) -> int:
    from diffplan.distributed import set_cpu_threads
    from diffplan.inverse_dynamics import train_inverse_dynamics

    set_cpu_threads(args.threads)
    from diffplan.runlock import RunLock

    out = args.out if args.out is not None else str(Path(args.checkpoint).with_name("inverse.pt"))
    with RunLock(Path(out).parent, "train-inverse"):  # one writer per folder
        path = train_inverse_dynamics(
            args.checkpoint,
            out,
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            hidden=args.hidden,
            seed=args.seed,
            device=args.device,
            progress=not args.no_progress,
            overwrite=args.overwrite,
        )
    print(f"inverse-dynamics model: {path}")
    return 0


# ----------------------------------------------------------------------------- bench


def add_bench_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "what",
        choices=["train", "plan", "data"],
        help="train: B5 training speed; plan: B4 MPC speed; data: B5 dataset loading",
    )
    p.add_argument("--dataset", default="diffplan/pointmaze-umaze-v0", help="for `bench data`")
    p.add_argument(
        "--root", default=None, help="`bench data`: datasets root (default: MINARI_DATASETS_PATH)"
    )
    p.add_argument(
        "--minari",
        action="store_true",
        help="`bench data`: also time the load through Minari's per-episode API, no cache",
    )
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument(
        "--scores",
        default="runs/b4",
        metavar="DIR",
        help="`bench plan`: folder of `diffplan evaluate --json` results; a row shows the score "
        "of the result whose planner settings match it (else 'not evaluated')",
    )


def cmd_bench(args: argparse.Namespace) -> int:
    if args.json:
        from diffplan.preflight import check_output_file

        check_output_file(args.json, args.overwrite, "--json", example="bench.json")
    if args.what == "plan":
        from diffplan.bench_plan import bench_plan, format_plan_table

        report = bench_plan(
            json_path=args.json, device=args.device, threads=args.threads, scores=args.scores
        )
        print(format_plan_table(report))
        return 0
    from diffplan.bench import bench_data, bench_train

    if args.what == "data":
        if args.root is None:
            _print_default_datasets_root()
        bench_data(args.dataset, json_path=args.json, root=args.root, minari=args.minari)
        return 0
    bench_train(json_path=args.json, device=args.device, threads=args.threads)
    return 0


# ----------------------------------------------------------------------------- wiring


@dataclass(frozen=True)
class Subcommand:
    name: str
    help: str
    add_args: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


SUBCOMMANDS: list[Subcommand] = [
    Subcommand("train", "train a trajectory diffusion model", add_train_args, cmd_train),
    Subcommand("sample", "sample plans from a checkpoint", add_sample_args, cmd_sample),
    Subcommand("info", "describe a checkpoint", add_info_args, cmd_info),
    Subcommand(
        "data",
        "make datasets (PointMaze, MuJoCo locomotion) and behaviour policies",
        add_data_args,
        cmd_data,
    ),
    Subcommand("refs", "measure reference scores (PointMaze)", add_refs_args, cmd_refs),
    Subcommand(
        "evaluate", "evaluate a checkpoint's planner on its task", add_evaluate_args, cmd_evaluate
    ),
    Subcommand(
        "train-value", "train a value network for guidance", add_train_value_args, cmd_train_value
    ),
    Subcommand(
        "train-critic",
        "train an in-support critic (IQL's Q and V) to rank plans",
        add_train_critic_args,
        cmd_train_critic,
    ),
    Subcommand(
        "train-state-model",
        "train a reward or start-return model of one state (goal-untold planning)",
        add_train_state_model_args,
        cmd_train_state_model,
    ),
    Subcommand(
        "train-inverse",
        "train inverse dynamics for a states-only model",
        add_train_inverse_args,
        cmd_train_inverse,
    ),
    Subcommand("bench", "benchmark training and sampling speed", add_bench_args, cmd_bench),
]


class _OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line, like every other diffplan error."""

    def error(self, message: str):
        self.exit(2, f"diffplan: error: {message} (see '{self.prog} --help')\n")


# The range of every numeric flag, declared once (flag -> (low, high); None: open). Integer
# flags not named here must be >= 1 (steps, episodes, envs, batch sizes, candidates, ...).
# Checked by argparse as the flag is read, before any work: a usage error, one line.
FLAG_RANGES: dict[str, tuple[float | None, float | None]] = {
    "--threads": (0, 4096),  # 0: half the cores
    "--seed": (0, 2**32 - 1),  # numpy's and gymnasium's seed range
    "--step": (0, None),
    "--replan-every": (0, None),  # 0: plan once per episode
    "--warm-start-t": (0, None),
    "--value-scale": (None, None),
    "--lr": (1e-12, 10.0),
    "--expectile": (1e-6, 1 - 1e-6),
}
INT_LIMIT = 10**9  # a count above this is a typo, not a plan


def _ranged(kind: type, flag: str):
    """argparse `type=` for `flag`: a finite number of `kind` within FLAG_RANGES."""
    default = (1, INT_LIMIT) if kind is int else (None, None)
    low, high = FLAG_RANGES.get(flag, default)
    high = INT_LIMIT if high is None and kind is int else high

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"must be {'an integer' if kind is int else 'a number'}, got {text!r}"
            ) from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        if low is not None and value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low:g}, got {text}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be <= {high:g}, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def _range_check_numbers(parser: argparse.ArgumentParser) -> None:
    """Give every int/float flag of `parser` (and its subcommands) its declared range."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _range_check_numbers(sub)
        elif action.type in (int, float) and action.option_strings:
            action.type = _ranged(action.type, action.option_strings[0])


def build_parser() -> argparse.ArgumentParser:
    from diffplan import __version__

    parser = _OneLineParser(prog="diffplan", description="Trajectory-diffusion planning toolkit.")
    parser.add_argument("--version", action="version", version=f"diffplan {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in SUBCOMMANDS:
        p = sub.add_parser(command.name, help=command.help, description=command.help)
        command.add_args(p)
        p.set_defaults(run=command.run)
    _range_check_numbers(parser)
    return parser


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    text = " ".join(str(message).split())
    label = "warning" if issubclass(category, DiffplanWarning) else category.__name__
    print(f"diffplan: {label}: {text}", file=file or sys.stderr)


def parse_command_line(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse argv; key=value overrides may come before, between or after the flags."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "overrides") and not any(x.startswith("-") for x in extra):
        args.overrides = [*args.overrides, *extra]  # argparse stops at the first flag
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_command_line(argv)
    if (
        args.command == "data"
        and getattr(args, "root", "") is None
        and not os.environ.get("MINARI_DATASETS_PATH")
    ):
        # One default for every command and the demo: ./data/minari, not Minari's ~/.minari.
        from diffplan.data.minari_source import datasets_root

        args.root = str(datasets_root()[0])
        print(f"datasets root: {args.root} (the default; set MINARI_DATASETS_PATH or --root)")
    try:
        with warnings.catch_warnings():
            if not os.environ.get("DIFFPLAN_DEBUG"):
                warnings.showwarning = _one_line_warning
            return int(args.run(args) or 0)
    except (DiffplanError, OSError, ValueError) as e:
        if os.environ.get("DIFFPLAN_DEBUG"):
            raise
        message = " ".join(str(e).split()) or type(e).__name__  # one line, always
        print(f"diffplan: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("diffplan: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
