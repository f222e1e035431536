"""Test-wide settings: never touch the network; one torch thread (the nets are tiny, and two
threads spin-waiting on shared cores ran 50x slower)."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import torch  # noqa: E402

torch.set_num_threads(1)
