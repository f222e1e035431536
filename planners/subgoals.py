"""Subgoals for detours longer than a plan: a keep-out region that closes a corridor forces a
route the model never saw in one training window.

A diffusion planner draws plans like its training windows. When a keep-out disk closes the
short way to the goal, the way round can be longer than any window the data holds, and then
every candidate either crosses the disk or cuts a wall (measured on B3's Medium block disk:
with the ball kept out by `KeepOutShield`, 27 of 28 episodes from the top-left stalled at the
disk or in a corner). The planner can still draw each part of the detour.

`RouteMap` knows where the data went (the free grid of a `guides.KeepInData` support) and
the keep-out regions, and finds the shortest route through that free space by Dijkstra on the
grid, with and without the regions. `SubgoalPlanner` wraps a planner: for each episode it
splits the route to the goal into legs at the farthest point that the regions do not
lengthen (a leg the model plans as it would without them), hands the planner the end of the
current leg as its goal, and moves on when the ball gets there. A route the regions do not
lengthen is one leg, the goal itself: the wrapped planner then acts exactly as without it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import dijkstra

# 8-connected grid moves and their lengths in cells.
_MOVES = [(di, dj) for di in (-1, 0, 1) for dj in (-1, 0, 1) if (di, dj) != (0, 0)]


class RouteMap:
    """Shortest routes through the positions the data visited, round keep-out disks.

    support: a `guides.KeepInData` on 2 position dims; a grid node is free where the data came
        within half its radius.
    regions: `guides.KeepOutDisk`s on the same dims; nodes within radius + clearance of one
        are blocked for `route` (not for `free_distances`).
    """

    def __init__(self, support, regions: Sequence = (), clearance: float = 0.1):
        if len(support.dims) != 2:
            raise ValueError(f"RouteMap works on 2 position dims, got {len(support.dims)}")
        if not clearance >= 0:
            raise ValueError(f"RouteMap clearance must be >= 0, got {clearance}")
        self.dims = list(support.dims)
        for region in regions:
            if list(region.dims) != list(support.dims):
                raise ValueError(
                    f"RouteMap region dims {list(region.dims)} differ from the support's "
                    f"{list(support.dims)}"
                )
        self.cell = float(support.cell)
        self.low = support.low.numpy().astype(np.float64)
        free = support.field.numpy() <= support.radius / 2  # where the data went, nearly
        self.shape = free.shape
        ii, jj = np.meshgrid(*[np.arange(n) for n in free.shape], indexing="ij")
        self.nodes_xy = self.low + self.cell * np.stack([ii, jj], -1).reshape(-1, 2)
        blocked = np.zeros(free.size, dtype=bool)
        for region in regions:
            center = region.center.numpy().astype(np.float64)
            blocked |= np.linalg.norm(self.nodes_xy - center, axis=1) < region.radius + clearance
        self.free = free.reshape(-1)
        self._graphs = {False: self._graph(self.free), True: self._graph(self.free & ~blocked)}
        self._open = {False: self.free, True: self.free & ~blocked}

    def _graph(self, open_nodes: np.ndarray):
        rows, cols, lengths = [], [], []
        index = np.arange(open_nodes.size).reshape(self.shape)
        grid = open_nodes.reshape(self.shape)
        n, m = self.shape
        for di, dj in _MOVES:
            a = index[max(0, -di) : n - max(0, di), max(0, -dj) : m - max(0, dj)]
            b = index[max(0, di) : n + min(0, di) or None, max(0, dj) : m + min(0, dj) or None]
            ok = grid.reshape(-1)[a] & grid.reshape(-1)[b]
            rows.append(a[ok])
            cols.append(b[ok])
            lengths.append(np.full(int(ok.sum()), self.cell * np.hypot(di, dj)))
        size = open_nodes.size
        return coo_matrix(
            (np.concatenate(lengths), (np.concatenate(rows), np.concatenate(cols))),
            shape=(size, size),
        ).tocsr()

    def nearest_node(self, xy, avoid_regions: bool = True) -> int:
        """The open grid node closest to an env-unit position."""
        open_nodes = np.flatnonzero(self._open[avoid_regions])
        if len(open_nodes) == 0:
            raise ValueError("RouteMap has no open node: the keep-out regions cover the data")
        d = np.linalg.norm(self.nodes_xy[open_nodes] - np.asarray(xy, dtype=np.float64), axis=1)
        return int(open_nodes[np.argmin(d)])

    def distances_from(self, xy, avoid_regions: bool) -> np.ndarray:
        """Route length from `xy` to every node (inf where no route), env units."""
        start = self.nearest_node(xy, avoid_regions)
        return dijkstra(self._graphs[avoid_regions], indices=start)

    def route(self, start, goal) -> np.ndarray | None:
        """(K, 2) node positions of the shortest route round the regions from start to goal,
        or None where the regions cut the goal off."""
        source = self.nearest_node(goal)
        distances, predecessors = dijkstra(
            self._graphs[True], indices=source, return_predecessors=True
        )
        node = self.nearest_node(start)
        if not np.isfinite(distances[node]):
            return None
        path = [node]
        while node != source:
            node = int(predecessors[node])
            path.append(node)
        return self.nodes_xy[path]

    def subgoals(
        self, start, goal, tolerance: float = 0.5, backoff: float = 1.0
    ) -> list[np.ndarray]:
        """Split the route round the regions into legs the regions do not lengthen. A leg
        would end at the farthest route point whose free route length (regions ignored) from
        the leg's start is within `tolerance` of its length along the route; there the short
        way through a region ties with the route, so the leg ends `backoff` (env units) before
        it, where the route is clearly the short way. The last leg ends at the goal."""
        if not (tolerance > 0 and backoff >= 0):
            raise ValueError(
                f"subgoals need tolerance > 0 and backoff >= 0, got {tolerance}, {backoff}"
            )
        goal = np.array(goal, dtype=np.float64)  # a copy: the legs outlive the caller's array
        route = self.route(start, goal)
        if route is None or len(route) < 2:
            return [goal]
        along = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(route, axis=0), axis=1))])
        legs, first = [], 0
        while True:
            free = self.distances_from(route[first], avoid_regions=False)
            ends = [self._node_of(route[k]) for k in range(first, len(route))]
            shortcut = (along[first:] - along[first]) - free[ends] > tolerance
            if not shortcut.any():
                return [*legs, goal]
            tie = first + max(int(np.argmax(shortcut)) - 1, 1)  # the farthest point before one
            last = int(np.searchsorted(along, along[tie] - backoff, side="right")) - 1
            last = min(max(last, first + 1), tie)
            legs.append(route[last].copy())
            first = last

    def _node_of(self, xy: np.ndarray) -> int:
        ij = np.rint((xy - self.low) / self.cell).astype(np.int64)
        return int(ij[0] * self.shape[1] + ij[1])


class SubgoalPlanner:
    """Wrap a goal-reaching planner (`MPCPlanner` or the like): per episode, the legs of
    `route_map.subgoals` from the ball's first position to its goal; the planner is given the
    current leg's end as its goal, and a fresh episode clock (`reset`) when the ball comes
    within `switch_radius` of it. Other attributes are read from the wrapped planner; set
    them (e.g. `action_filter`) on the wrapped planner itself."""

    def __init__(self, planner, route_map: RouteMap, switch_radius: float = 0.5, tolerance=0.5):
        if not switch_radius > 0:
            raise ValueError(f"SubgoalPlanner switch_radius must be > 0, got {switch_radius}")
        if not tolerance > 0:
            raise ValueError(f"SubgoalPlanner tolerance must be > 0, got {tolerance}")
        self.planner = planner
        self.route_map = route_map
        self.switch_radius = float(switch_radius)
        self.tolerance = float(tolerance)
        self._legs: dict[int, list[np.ndarray]] = {}
        self._goals: dict[int, np.ndarray] = {}
        self.legs_planned: list[int] = []  # legs per episode (a diagnostic)
        self._rows: int | None = None  # rows of the last call without env_indices

    def __getattr__(self, name):
        if name == "planner":  # not set yet (copy, pickle): no recursion
            raise AttributeError(name)
        return getattr(self.planner, name)

    def reset(self, env_indices: list[int] | None = None) -> None:
        for k in list(self._legs) if env_indices is None else env_indices:
            self._legs.pop(k, None)
            self._goals.pop(k, None)
        self.planner.reset(env_indices)

    def act(self, observation, goal, env_indices=None) -> np.ndarray:
        if goal is None:  # nothing to route to
            return self.planner.act(observation, goal, env_indices)
        obs = np.asarray(observation, dtype=np.float64)
        single = obs.ndim == 1
        obs2 = obs[None] if single else obs
        goal = np.asarray(goal, dtype=np.float64)
        if goal.shape[-1] != len(self.route_map.dims):
            raise ValueError(
                f"SubgoalPlanner goals must be positions on the route map's dims "
                f"{self.route_map.dims}, got shape {goal.shape}"
            )
        goals = np.broadcast_to(goal, (len(obs2), goal.shape[-1])).copy()
        if env_indices is None:
            slots = list(range(len(obs2)))
            if self._rows != len(obs2):  # the wrapped planner starts every slot fresh, too
                self._legs.clear()
                self._goals.clear()
                self._rows = len(obs2)
        else:
            slots = [int(k) for k in env_indices]
        dims = self.route_map.dims
        restart = []
        for row, slot in enumerate(slots):
            position = obs2[row, dims]
            if slot not in self._legs or not np.array_equal(self._goals[slot], goals[row]):
                self._legs[slot] = self.route_map.subgoals(position, goals[row], self.tolerance)
                self._goals[slot] = goals[row].copy()
                self.legs_planned.append(len(self._legs[slot]))
            legs = self._legs[slot]
            if len(legs) > 1 and np.linalg.norm(position - legs[0]) < self.switch_radius:
                legs.pop(0)
                restart.append(slot)
            goals[row] = legs[0]
        if restart:
            self.planner.reset(restart)
        return self.planner.act(observation, goals[0] if single else goals, env_indices)
