"""The registry of denoising networks (`model.type` in a config).

A backbone is a torch module with ``forward(x (B, H, D), t (B,), cond=None, cond_mask=None) ->
(B, H, D)`` and a ``from_config(model_config, transition_dim, cond_dim)`` classmethod. A new
one is one file plus one line here; entries are imported lazily, so reading a config (and its
errors) needs no torch.
"""

from __future__ import annotations

import importlib

BACKBONES: dict[str, str] = {
    "unet": "diffplan.networks:TemporalUnet",  # Diffuser's temporal U-Net (the default)
    "transformer": "diffplan.transformer:TrajectoryTransformer",  # DiT-style, adaLN-Zero
}


def backbone_class(name: str) -> type:
    if name not in BACKBONES:
        raise ValueError(f"unknown model.type {name!r}; choose one of {', '.join(BACKBONES)}")
    module, cls = BACKBONES[name].split(":")
    return getattr(importlib.import_module(module), cls)
