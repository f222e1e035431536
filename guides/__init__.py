"""Plug-in guidance modules for diffplan's sampler, all on one protocol (`Guide`).

A guide implements any of `inpaint`, `objective`, `gradient`, `model_inputs`, `score`,
`finalize` (see `diffplan.guidance`); a list of guides composes with `Compose([...])` or `a + b`.
"""

from diffplan.guidance import Compose, Guide, GuideContext, Inpainting, ModelInputs
from guides.constraints import (
    ActionBounds,
    Constraint,
    Cost,
    KeepOutBox,
    KeepOutDisk,
    Smoothness,
    StateBounds,
)
from guides.critic import CriticRanking
from guides.dynamics import StepLimit
from guides.hold import HoldAtBest
from guides.inpaint import Goal, StartState, Waypoints
from guides.returns import ReturnConditioning, ReturnTargetWarning
from guides.support import KeepInData
from guides.value import ValueGuide, ValueRanking

__all__ = [
    "ActionBounds",
    "Compose",
    "Constraint",
    "Cost",
    "CriticRanking",
    "Goal",
    "Guide",
    "GuideContext",
    "HoldAtBest",
    "Inpainting",
    "KeepInData",
    "KeepOutBox",
    "KeepOutDisk",
    "ModelInputs",
    "ReturnConditioning",
    "ReturnTargetWarning",
    "Smoothness",
    "StartState",
    "StateBounds",
    "StepLimit",
    "ValueGuide",
    "ValueRanking",
    "Waypoints",
]
