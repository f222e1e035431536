"""Test-wide settings: never touch the network, keep torch to the 2 cores we have."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import torch  # noqa: E402

torch.set_num_threads(1)  # 2 threads spin-wait badly when the 2 cores are shared
