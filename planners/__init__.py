"""Planning loops that turn a trained trajectory model plus guides into actions."""

from planners.mpc import MPCPlanner, Plan
from planners.safety import KeepOutBrake, KeepOutShield
from planners.subgoals import RouteMap, SubgoalPlanner
from planners.tracking import PDTracker

__all__ = [
    "KeepOutBrake",
    "KeepOutShield",
    "MPCPlanner",
    "PDTracker",
    "Plan",
    "RouteMap",
    "SubgoalPlanner",
]
