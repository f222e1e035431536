"""Maze grid geometry and waypoint controllers for gymnasium-robotics PointMaze.

Everything here is pure numpy/Python (no MuJoCo), so planners, plots and tests
can use the geometry without building an environment.

Conventions (as gymnasium-robotics' ``Maze`` with ``maze_size_scaling=1``):
a map is a list of rows, ``1`` is a wall, anything else (``0``, ``"g"``,
``"r"``, ``"c"``) is free; cell ``(row, col)`` has centre
``x = (col + 0.5) - width / 2``, ``y = height / 2 - (row + 0.5)``, so y points
up and row 0 is the top of the map.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence

import numpy as np

Cell = tuple[int, int]
MazeMap = list[list[int | str]]

# Maps copied from gymnasium_robotics.envs.maze.maps (kept here so geometry needs
# no gymnasium import; a test checks they still match the package).
U_MAZE: MazeMap = [
    [1, 1, 1, 1, 1],
    [1, 0, 0, 0, 1],
    [1, 1, 1, 0, 1],
    [1, 0, 0, 0, 1],
    [1, 1, 1, 1, 1],
]
MEDIUM_MAZE: MazeMap = [
    [1, 1, 1, 1, 1, 1, 1, 1],
    [1, 0, 0, 1, 1, 0, 0, 1],
    [1, 0, 0, 1, 0, 0, 0, 1],
    [1, 1, 0, 0, 0, 1, 1, 1],
    [1, 0, 0, 1, 0, 0, 0, 1],
    [1, 0, 1, 0, 0, 1, 0, 1],
    [1, 0, 0, 0, 1, 0, 0, 1],
    [1, 1, 1, 1, 1, 1, 1, 1],
]
LARGE_MAZE: MazeMap = [
    [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
    [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1],
    [1, 0, 1, 1, 0, 1, 0, 1, 0, 1, 0, 1],
    [1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1],
    [1, 0, 1, 1, 1, 1, 0, 1, 1, 1, 0, 1],
    [1, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 1],
    [1, 1, 0, 1, 0, 1, 0, 1, 0, 1, 1, 1],
    [1, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1],
    [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
]

MAZE_MAPS: dict[str, MazeMap] = {"umaze": U_MAZE, "medium": MEDIUM_MAZE, "large": LARGE_MAZE}
# B1 single-task goal cells, (row, col).
GOAL_CELLS: dict[str, Cell] = {"umaze": (1, 1), "medium": (6, 6), "large": (7, 9)}
# Default gymnasium-robotics step limits of the PointMaze-v3 ids.
MAX_EPISODE_STEPS: dict[str, int] = {"umaze": 300, "medium": 600, "large": 800}
ENV_NAMES: dict[str, str] = {"umaze": "UMaze", "medium": "Medium", "large": "Large"}

# BFS neighour order (fixed so that ties between equal-length paths are broken
# the same way every run): up, down, left, right in map (row, col) terms.
NEIGHBOURS: tuple[Cell, ...] = ((-1, 0), (1, 0), (0, -1), (0, 1))

GOAL_RADIUS = 0.45  # gymnasium-robotics success / sparse reward radius
WAYPOINT_RADIUS = 0.1  # switch to the next waypoint within this distance
KP, KD = 10.0, 1.0  # PD gains: a = KP (waypoint - xy) - KD velocity


def check_maze(maze: str) -> str:
    """Return ``maze`` if it is a known maze name, else raise a clear error."""
    if maze not in MAZE_MAPS:
        raise ValueError(f"unknown maze {maze!r}; expected one of {sorted(MAZE_MAPS)}")
    return maze


def single_goal_map(maze: str) -> MazeMap:
    """B1 evaluation map: the maze with exactly one goal cell ``'g'``.

    gymnasium-robotics then uses every ``0`` cell as a possible reset
    (``Maze.make_maze``: no ``'r'``/``'c'`` cells -> resets are the empty cells),
    so the start is any free cell except the goal cell.
    """
    grid = [list(row) for row in MAZE_MAPS[check_maze(maze)]]
    r, c = GOAL_CELLS[maze]
    grid[r][c] = "g"
    return grid


class MazeGrid:
    """Free cells, cell <-> xy conversion and BFS shortest paths of one maze map."""

    def __init__(self, maze_map: Sequence[Sequence[int | str]]):
        self.maze_map: MazeMap = [list(row) for row in maze_map]
        self.height = len(self.maze_map)  # rows ("map_length" in gymnasium-robotics)
        self.width = len(self.maze_map[0])  # columns ("map_width")
        self.walls = np.array([[cell == 1 for cell in row] for row in self.maze_map], dtype=bool)
        self.free_cells: list[Cell] = [
            (r, c) for r in range(self.height) for c in range(self.width) if not self.walls[r, c]
        ]
        self._paths: dict[tuple[Cell, Cell], list[Cell]] = {}

    @classmethod
    def from_name(cls, maze: str) -> MazeGrid:
        return cls(MAZE_MAPS[check_maze(maze)])

    def is_free(self, cell: Cell) -> bool:
        r, c = cell
        return 0 <= r < self.height and 0 <= c < self.width and not self.walls[r, c]

    def cell_to_xy(self, cell: Cell) -> np.ndarray:
        """Centre of cell ``(row, col)`` in env coordinates."""
        return np.array(
            [(cell[1] + 0.5) - self.width / 2, self.height / 2 - (cell[0] + 0.5)], dtype=np.float64
        )

    def wall_boxes(self, margin: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """(K, 2) low and high corners of every wall cell in env xy, grown by `margin` (the
        ball's radius keeps its centre that far from a wall face)."""
        cells = np.argwhere(self.walls)  # (K, 2) rows, cols
        centres = np.stack([self.cell_to_xy(tuple(c)) for c in cells])
        return centres - 0.5 - margin, centres + 0.5 + margin

    def xy_to_cell(self, xy: Sequence[float]) -> Cell:
        """Cell ``(row, col)`` containing ``xy`` (floor, as gymnasium-robotics does)."""
        return (
            math.floor(self.height / 2 - float(xy[1])),
            math.floor(float(xy[0]) + self.width / 2),
        )

    def check_goal(self, goal: Sequence[float], start: Sequence[float] | None = None) -> None:
        """Raise ValueError (one line) if ``goal`` (x, y) lies in a wall, outside the maze, or in
        a part of the maze that ``start`` (x, y) cannot reach."""
        cell = self.xy_to_cell(goal)
        where = f"goal ({float(goal[0]):.2f}, {float(goal[1]):.2f})"
        if not (0 <= cell[0] < self.height and 0 <= cell[1] < self.width):
            raise ValueError(f"{where} lies outside the maze; give a point in a free cell")
        if self.walls[cell]:
            nearest = min(
                self.free_cells, key=lambda c: float(np.linalg.norm(self.cell_to_xy(c) - goal))
            )
            x, y = self.cell_to_xy(nearest)
            raise ValueError(
                f"{where} lies inside a wall (cell {cell}); give a point in a free cell, "
                f"e.g. the nearest free cell's centre ({x:.2f}, {y:.2f})"
            )
        if start is not None:
            origin = self.xy_to_cell(start)
            if self.is_free(origin):
                try:
                    self.shortest_path(origin, cell)
                except ValueError:
                    raise ValueError(
                        f"{where} (cell {cell}) cannot be reached from the ball's cell {origin}: "
                        "no free path joins them; give a goal in the ball's part of the maze"
                    ) from None

    def shortest_path(self, start: Cell, goal: Cell) -> list[Cell]:
        """BFS cell path from ``start`` to ``goal``, both included (cached).

        Neighbours are expanded in the fixed order ``NEIGHBOURS``, so the
        result is deterministic. Raises if either cell is a wall or unreachable.
        """
        key = (start, goal)
        path = self._paths.get(key)
        if path is not None:
            return path
        if not self.is_free(start) or not self.is_free(goal):
            raise ValueError(f"no path: start {start} or goal {goal} is not a free cell")
        parent: dict[Cell, Cell | None] = {start: None}
        queue = deque([start])
        while queue:
            cell = queue.popleft()
            if cell == goal:
                break
            for dr, dc in NEIGHBOURS:
                nxt = (cell[0] + dr, cell[1] + dc)
                if nxt not in parent and self.is_free(nxt):
                    parent[nxt] = cell
                    queue.append(nxt)
        if goal not in parent:
            raise ValueError(f"goal {goal} unreachable from {start}")
        path = [goal]
        while path[-1] != start:
            path.append(parent[path[-1]])  # type: ignore[arg-type]
        path.reverse()
        self._paths[key] = path
        return path


def _xy_vel(obs: dict | np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(xy, velocity, desired_goal or None) from a PointMaze dict or flat observation."""
    if isinstance(obs, dict):
        o = np.asarray(obs["observation"], dtype=np.float64)
        return o[:2], o[2:4], np.asarray(obs["desired_goal"], dtype=np.float64)
    o = np.asarray(obs, dtype=np.float64)
    return o[:2], o[2:4], (o[4:6] if o.shape[-1] >= 6 else None)


class NoiseFreeController:
    """The B1 reference expert (defines ``ref_max``), exactly as BENCHMARKS.md states.

    BFS from the ball's current cell to the goal cell; waypoints are the path's
    cell centres *including the ball's own cell*, the last replaced by the exact
    goal; advance at most one waypoint per step when within 0.1; recompute the
    path whenever the ball enters a new cell (or the goal moves);
    ``a = clip(10 (waypoint - xy) - velocity, -1, 1)``.
    """

    def __init__(self, grid: MazeGrid | Sequence[Sequence[int | str]] | str):
        if isinstance(grid, str):
            grid = MazeGrid.from_name(grid)
        elif not isinstance(grid, MazeGrid):
            grid = MazeGrid(grid)
        self.grid = grid
        self.reset()

    def reset(self) -> None:
        self._cell: Cell | None = None
        self._goal: np.ndarray | None = None
        self._waypoints: np.ndarray = np.zeros((0, 2))
        self._idx = 0

    def _replan(self, cell: Cell, goal: np.ndarray) -> None:
        path = self.grid.shortest_path(cell, self.grid.xy_to_cell(goal))
        wps = np.array([self.grid.cell_to_xy(c) for c in path])
        wps[-1] = goal
        self._waypoints, self._idx = wps, 0

    def __call__(self, obs: dict | np.ndarray, goal: np.ndarray | None = None) -> np.ndarray:
        """Action for one observation (dict, or flat ``(x, y, vx, vy[, gx, gy])``)."""
        xy, vel, obs_goal = _xy_vel(obs)
        goal = obs_goal if goal is None else np.asarray(goal, dtype=np.float64)
        if goal is None:
            raise ValueError("no goal: pass a dict observation, a flat one with a goal, or goal=")
        cell = self.grid.xy_to_cell(xy)
        if not self.grid.is_free(cell):  # numerically on a wall edge: keep the last cell
            cell = self._cell if self._cell is not None else cell
        if cell != self._cell or self._goal is None or not np.array_equal(goal, self._goal):
            self._cell, self._goal = cell, goal.copy()
            self._replan(cell, goal)
        wp = self._waypoints[self._idx]
        if self._idx < len(self._waypoints) - 1 and np.hypot(*(wp - xy)) <= WAYPOINT_RADIUS:
            self._idx += 1
            wp = self._waypoints[self._idx]
        return np.clip(KP * (wp - xy) - KD * vel, -1.0, 1.0)


class DataController:
    """The noisy data-collection controller of the reference dataset procedure.

    Same PD law as :class:`NoiseFreeController`, but: the waypoints are the
    BFS path's cell centres *after* the ball's own cell (the last one the exact
    goal); the path is only recomputed when the goal changes or the ball strays
    off it (noise pushed it into a cell that is not on the path); intermediate
    waypoints are jittered uniformly by up to ``jitter`` per axis; the caller
    adds the Gaussian action noise and clips. All randomness comes from ``rng``.
    """

    def __init__(self, grid: MazeGrid, rng: np.random.Generator, jitter: float = 0.2):
        self.grid, self.rng, self.jitter = grid, rng, jitter
        self._goal: np.ndarray | None = None
        self._cells: set[Cell] = set()
        self._waypoints = np.zeros((0, 2))
        self._idx = 0
        self.replans = 0

    def _replan(self, cell: Cell, goal: np.ndarray) -> None:
        path = self.grid.shortest_path(cell, self.grid.xy_to_cell(goal))
        self._cells = set(path)
        # The ball is already in its own cell: head for the next one, as the
        # reference controller does (1M U-Maze steps then give ~12.9k episodes,
        # reference 13,210; re-centring in the own cell first gives ~11.3k).
        if len(path) > 1:
            path = path[1:]
        wps = np.array([self.grid.cell_to_xy(c) for c in path])
        if len(wps) > 1:
            wps[:-1] += self.rng.uniform(-self.jitter, self.jitter, size=(len(wps) - 1, 2))
        wps[-1] = goal
        self._waypoints, self._idx = wps, 0
        self._goal = goal.copy()
        self.replans += 1

    def __call__(self, xy: np.ndarray, vel: np.ndarray, goal: np.ndarray) -> np.ndarray:
        """Noise-free PD action toward the current waypoint (not clipped)."""
        cell = self.grid.xy_to_cell(xy)
        if self._goal is None or not np.array_equal(goal, self._goal):
            self._replan(cell, goal)
        elif cell not in self._cells and self.grid.is_free(cell):
            self._replan(cell, goal)  # strayed off the path: plan again from here
        wp = self._waypoints[self._idx]
        if self._idx < len(self._waypoints) - 1:
            d = wp - xy
            if d[0] * d[0] + d[1] * d[1] <= WAYPOINT_RADIUS * WAYPOINT_RADIUS:
                self._idx += 1
                wp = self._waypoints[self._idx]
        return KP * (wp - xy) - KD * vel
