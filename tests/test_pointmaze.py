"""PointMaze geometry, controller and dataset generator (diffplan.tasks.pointmaze)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from diffplan.tasks.pointmaze.envs import (  # noqa: E402
    MINARI_REFS,
    REFS_PATH,
    generate_pointmaze_dataset,
    load_refs,
    make_eval_env,
)
from diffplan.tasks.pointmaze.maze import (  # noqa: E402
    GOAL_CELLS,
    GOAL_RADIUS,
    MAZE_MAPS,
    MazeGrid,
    NoiseFreeController,
    single_goal_map,
)


def test_maps_match_gymnasium_robotics() -> None:
    from gymnasium_robotics.envs.maze import maps

    assert MAZE_MAPS["umaze"] == maps.U_MAZE
    assert MAZE_MAPS["medium"] == maps.MEDIUM_MAZE
    assert MAZE_MAPS["large"] == maps.LARGE_MAZE


@pytest.mark.parametrize("maze", ["umaze", "medium", "large"])
def test_cell_xy_conversion_matches_env(maze: str) -> None:
    env = make_eval_env(maze)
    m = env.unwrapped.maze
    grid = MazeGrid.from_name(maze)
    for cell in grid.free_cells:
        xy = grid.cell_to_xy(cell)
        np.testing.assert_allclose(xy, m.cell_rowcol_to_xy(np.array(cell)))
        for dx, dy in [(0.49, 0.49), (-0.49, -0.49), (0.3, -0.2)]:
            p = xy + [dx, dy]
            assert grid.xy_to_cell(p) == tuple(int(v) for v in m.cell_xy_to_rowcol(p)) == cell
    env.close()


def test_single_goal_map_resets_everywhere_else() -> None:
    for maze, cell in GOAL_CELLS.items():
        env = make_eval_env(maze)
        m = env.unwrapped.maze
        assert len(m.unique_goal_locations) == 1
        np.testing.assert_allclose(
            m.unique_goal_locations[0], MazeGrid.from_name(maze).cell_to_xy(cell)
        )
        assert len(m.unique_reset_locations) == len(MazeGrid.from_name(maze).free_cells) - 1
        assert single_goal_map(maze)[cell[0]][cell[1]] == "g"
        env.close()


def test_bfs_is_shortest_and_deterministic() -> None:
    grid = MazeGrid.from_name("umaze")
    path = grid.shortest_path((3, 1), (1, 1))
    assert path == [(3, 1), (3, 2), (3, 3), (2, 3), (1, 3), (1, 2), (1, 1)]
    assert grid.shortest_path((1, 1), (1, 1)) == [(1, 1)]
    large = MazeGrid.from_name("large")
    p = large.shortest_path((1, 1), (7, 9))
    assert all(abs(a[0] - b[0]) + abs(a[1] - b[1]) == 1 for a, b in zip(p, p[1:], strict=False))
    assert p == MazeGrid.from_name("large").shortest_path((1, 1), (7, 9))


def test_check_goal_accepts_free_cells_and_refuses_walls() -> None:
    grid = MazeGrid.from_name("medium")
    for cell in grid.free_cells:
        grid.check_goal(grid.cell_to_xy(cell), start=grid.cell_to_xy(grid.free_cells[0]))
    walls = [(r, c) for r in range(grid.height) for c in range(grid.width) if grid.walls[r, c]]
    for cell in walls:
        with pytest.raises(ValueError, match="inside a wall"):
            grid.check_goal(grid.cell_to_xy(cell))


def test_walls_option_ranks_a_plan_through_a_wall_below_one_around_it() -> None:
    """task.options.walls: the maze's wall cells (grown by the margin) score candidates; a
    plan cutting the Large maze's wall (2, 2) ranks below the route round it."""
    import torch

    from diffplan.errors import ConfigError
    from diffplan.guidance import Compose, GuideContext
    from diffplan.spec import TrajectorySpec
    from diffplan.tasks.pointmaze import PointMazeTask

    grid = MazeGrid.from_name("large")
    low, high = grid.wall_boxes(0.1)
    assert len(low) == int(grid.walls.sum())
    assert np.allclose(high - low, 1.2)
    task = PointMazeTask("large", {"walls": 0.1})
    walls = [g for g in task.planner_guides(None, None) if getattr(g, "name", "") == "walls"]
    assert len(walls) == 1 and not walls[0].uses_gradient
    assert not any(getattr(g, "name", "") == "walls"
                   for g in PointMazeTask("large").planner_guides(None, None))  # fmt: skip
    cells = {"through": [(1, 1), (2, 2), (3, 3)], "around": [(1, 1), (2, 1), (3, 1)]}
    spec = TrajectorySpec(obs_dim=4, act_dim=2, horizon=3)
    plans = torch.zeros(2, 3, 6)
    for i, route in enumerate(cells.values()):
        plans[i, :, 2:4] = torch.tensor(np.stack([grid.cell_to_xy(c) for c in route]))
    ctx = GuideContext(spec=spec, normalizer=None, n_envs=1, n_candidates=2)
    scores = Compose(walls).score(plans, ctx)
    assert scores[1] == 0.0 and scores[0] < 0.0
    with pytest.raises(ConfigError, match="walls"):
        PointMazeTask("large", {"walls": 0.7})


def test_controller_reaches_goal_from_every_umaze_cell() -> None:
    env = make_eval_env("umaze")
    u = env.unwrapped
    grid = MazeGrid.from_name("umaze")
    goal_cell = GOAL_CELLS["umaze"]
    for cell in grid.free_cells:
        if cell == goal_cell:
            continue
        obs, _ = env.reset(seed=0, options={"reset_cell": np.array(cell)})
        u.point_env.set_state(grid.cell_to_xy(cell), np.zeros(2))  # exact cell centre
        o = np.concatenate([grid.cell_to_xy(cell), np.zeros(2)])
        ctrl = NoiseFreeController(grid)
        goal = obs["desired_goal"]
        reached = False
        for _ in range(300):
            obs, _, _, _, info = env.step(ctrl(o, goal).astype(np.float32))
            o = obs["observation"]
            if info["success"]:
                reached = True
                break
        assert reached, f"controller did not reach the goal from cell {cell}"
    env.close()


def test_load_refs() -> None:
    assert load_refs("umaze", source="minari") == MINARI_REFS["umaze"]["sparse"]
    assert load_refs("large", dense=True, source="minari") == (27.17, 481.53)
    assert REFS_PATH.exists(), "diffplan/tasks/pointmaze/refs.json missing"
    doc = json.loads(REFS_PATH.read_text())
    assert doc["episodes"] == 100 and "command" in doc and "versions" in doc
    for maze in GOAL_CELLS:
        for dense in (False, True):
            lo, hi = load_refs(maze, dense)
            assert 0 <= lo < hi


# ----------------------------------------------------------------------------- generator

STEPS = 3000


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("minari")
    summary = generate_pointmaze_dataset("umaze", steps=STEPS, seed=7, root=root, progress=False)
    return {"root": root, "summary": summary}


def test_generator_default_root_is_the_cli_default(tmp_path, monkeypatch) -> None:
    """Called from Python with no root, datasets land where every command looks: ./data/minari."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MINARI_DATASETS_PATH", raising=False)
    generate_pointmaze_dataset("umaze", steps=200, seed=1, progress=False)
    assert (tmp_path / "data/minari/diffplan/pointmaze-umaze-v0/data/main_data.hdf5").is_file()
    assert "MINARI_DATASETS_PATH" not in os.environ


def _load(root, dataset_id: str):  # noqa: ANN001
    import minari

    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    try:
        return minari.load_dataset(dataset_id)
    finally:
        if old is None:
            os.environ.pop("MINARI_DATASETS_PATH")
        else:
            os.environ["MINARI_DATASETS_PATH"] = old


def test_generator_summary(generated: dict) -> None:
    s = generated["summary"]
    assert s["dataset_id"] == "diffplan/pointmaze-umaze-v0"
    assert s["steps"] == STEPS and s["steps_simulated"] == STEPS
    assert s["episodes"] >= 10
    assert s["mean_episode_length"] == pytest.approx(STEPS / s["episodes"])
    assert 0.9 <= s["controller_success"] <= 1.0
    for key in ("wall_time_s", "steps_per_s", "episodes_finished", "last_episode_unfinished"):
        assert key in s
    assert json.loads((generated["root"] / s["dataset_id"] / "generation_summary.json").read_text())


def test_generator_dataset_contents(generated: dict) -> None:
    import gymnasium as gym

    ds = _load(generated["root"], generated["summary"]["dataset_id"])
    assert ds.total_steps == STEPS
    assert ds.total_episodes == generated["summary"]["episodes"]
    assert isinstance(ds.observation_space, gym.spaces.Dict)
    assert set(ds.observation_space.spaces) == {"observation", "achieved_goal", "desired_goal"}
    assert ds.observation_space["observation"].shape == (4,)
    assert ds.action_space.shape == (2,)
    assert ds.storage.metadata["generation_summary"]["episodes"] == ds.total_episodes
    eps = list(ds.iterate_episodes())
    for k, ep in enumerate(eps):
        t = len(ep.actions)
        assert ep.observations["observation"].shape == (t + 1, 4)
        np.testing.assert_array_equal(
            ep.observations["achieved_goal"], ep.observations["observation"][:, :2]
        )
        assert np.all(ep.observations["desired_goal"] == ep.observations["desired_goal"][0])
        assert ep.truncations[-1] and not ep.truncations[:-1].any() and not ep.terminations.any()
        assert np.all(np.abs(ep.actions) <= 1.0)
        if k < len(eps) - 1:  # every episode but the last ends at a goal arrival
            d = np.linalg.norm(
                ep.observations["achieved_goal"][-1] - ep.observations["desired_goal"][-1]
            )
            assert d <= GOAL_RADIUS and ep.infos["success"][-1]
            # the next episode starts from the same ball state, with a new goal
            nxt = eps[k + 1].observations
            np.testing.assert_array_equal(nxt["observation"][0], ep.observations["observation"][-1])
            assert np.linalg.norm(nxt["achieved_goal"][0] - nxt["desired_goal"][0]) > GOAL_RADIUS
    env = ds.recover_environment()
    assert env.spec.id == "PointMaze_UMaze-v3" and env.spec.kwargs["reset_target"]
    ev = ds.recover_environment(eval_env=True)
    assert ev.spec.max_episode_steps == 300 and not ev.spec.kwargs["reset_target"]
    assert ev.spec.kwargs["maze_map"][1][1] == "g"


def test_generator_deterministic_and_refuses_overwrite(generated: dict, tmp_path) -> None:  # noqa: ANN001
    s2 = generate_pointmaze_dataset(
        "umaze", steps=STEPS, seed=7, root=tmp_path, dataset_id="diffplan/again-v0", progress=False
    )
    assert s2["episodes"] == generated["summary"]["episodes"]
    a = _load(generated["root"], generated["summary"]["dataset_id"])
    b = _load(tmp_path, "diffplan/again-v0")
    for ea, eb in zip(a.iterate_episodes(), b.iterate_episodes(), strict=True):
        np.testing.assert_array_equal(ea.actions, eb.actions)
        for key in ("observation", "desired_goal"):
            np.testing.assert_array_equal(ea.observations[key], eb.observations[key])
        np.testing.assert_array_equal(ea.rewards, eb.rewards)
    with pytest.raises(FileExistsError, match="diffplan/again-v0"):
        generate_pointmaze_dataset(
            "umaze", steps=100, root=tmp_path, dataset_id="diffplan/again-v0", progress=False
        )
    s3 = generate_pointmaze_dataset(
        "umaze", steps=200, seed=8, root=tmp_path, dataset_id="diffplan/again-v0",
        progress=False, overwrite=True, drop_last=True,
    )  # fmt: skip
    assert s3["steps"] <= 200 and not s3["last_episode_unfinished"]
    c = _load(tmp_path, "diffplan/again-v0")
    assert c.total_steps == s3["steps"]
