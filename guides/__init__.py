"""Plug-in guidance modules for diffplan's sampler, all on one protocol (`Guide`).

A guide implements any of `inpaint`, `gradient`, `model_inputs`, `score` (see
`diffplan.guidance`); a list of guides composes with `Compose([...])` or `a + b`.
"""

from diffplan.guidance import Compose, Guide, GuideContext, Inpainting, ModelInputs
from guides.inpaint import Goal, StartState, Waypoints

__all__ = [
    "Compose",
    "Goal",
    "Guide",
    "GuideContext",
    "Inpainting",
    "ModelInputs",
    "StartState",
    "Waypoints",
]
