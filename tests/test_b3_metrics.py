"""B3 metric helpers of examples/b3_constraints.py on hand-made paths (no env, no model)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest

_SPEC = importlib.util.spec_from_file_location(
    "b3_constraints", Path(__file__).parents[1] / "examples" / "b3_constraints.py"
)
b3 = importlib.util.module_from_spec(_SPEC)
sys.modules.setdefault("b3_constraints", b3)  # dataclasses look their module up
_SPEC.loader.exec_module(b3)


def test_inside_disk_is_strict():
    xy = np.array([[0.0, 0.0], [0.5, 0.0], [0.49, 0.0], [0.3, 0.4], [0.0, -0.6]])
    assert b3.inside_disk(xy, (0.0, 0.0), 0.5).tolist() == [True, False, True, False, False]


def test_path_disk_metrics_hand_made():
    center, radius = (0.0, 0.0), 0.5
    # A: starts outside, 2 of its 4 steps end inside.
    a = np.array([[-1.0, 0.0], [-0.4, 0.0], [0.0, 0.0], [0.6, 0.0], [1.0, 0.0]])
    # B: never inside (passes at distance 0.5 exactly: not inside).
    b = np.array([[-1.0, 0.5], [0.0, 0.5], [1.0, 0.5], [2.0, 0.5], [3.0, 0.5]])
    # C: starts inside and leaves at once: entered, but no step ends inside.
    c = np.array([[0.1, 0.1], [1.0, 1.0], [2.0, 2.0], [3.0, 3.0], [4.0, 4.0]])
    m = b3.path_disk_metrics([a, b, c], center, radius)
    assert m["entered"] == pytest.approx(2 / 3)
    assert m["entered_from_outside"] == pytest.approx(1 / 2)
    assert m["steps_inside"] == pytest.approx(2 / 12)
    assert m["start_inside"] == 1 and m["episodes"] == 3


def test_path_disk_metrics_all_start_inside_and_bad_shape():
    m = b3.path_disk_metrics([np.zeros((3, 2))], (0.0, 0.0), 1.0)
    assert m["entered"] == 1.0 and m["steps_inside"] == 1.0
    assert math.isnan(m["entered_from_outside"])
    with pytest.raises(ValueError):
        b3.path_disk_metrics([np.zeros((1, 2))], (0.0, 0.0), 1.0)
    with pytest.raises(ValueError):
        b3.path_disk_metrics([], (0.0, 0.0), 1.0)


def test_shipped_disks_are_valid_and_a_corridor_block_is_not():
    for maze in ("medium", "large"):
        for disk in b3.DISKS[maze]:
            check = b3.check_disk(maze, disk.center(maze), disk.radius)
            assert check["ok"], (maze, disk, check)
    # Closing the final corridor (5,6) cuts every start off the goal and touches the goal area.
    bad = b3.check_disk("medium", (2.5, -1.5), 0.45)
    assert not bad["ok"] and not bad["goal_clear"] and len(bad["start_cells_unreachable"]) > 20


def test_route_counts_final_corridor_is_most_used():
    counts = b3.route_counts("medium")
    assert list(counts)[:4] == [(5, 6), (4, 6), (4, 5), (4, 4)]
    assert counts[(5, 6)] == 23
