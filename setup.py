"""Installs the `diffplan`, `guides` and `planners` packages and the `diffplan` command.

Install torch first (`pip install torch==2.13.0`): an unpinned torch pulls GBs of CUDA wheels.
"""

from setuptools import find_packages, setup

setup(
    name="diffplan",
    version="0.1.0",
    description="Diffuser-style trajectory-diffusion planning for offline RL",
    python_requires=">=3.11",
    packages=find_packages(
        include=["diffplan", "diffplan.*", "guides", "guides.*", "planners", "planners.*"]
    ),
    install_requires=[
        "torch==2.13.0",
        "numpy",
        "scipy",
        "gymnasium==1.4.*",
        "gymnasium-robotics==1.4.*",
        "mujoco",
        "minari==0.5.*",  # not minari[all]: h5py is all we need to read and write datasets
        "h5py",
        "tqdm",
        "tensorboard",
        "pyyaml",
        "matplotlib",
    ],
    extras_require={
        # D4RL files are read with h5py; the `d4rl` package itself needs mujoco-py binaries.
        # Optional: diffplan never imports it (it cannot run without mujoco-py binaries).
        "d4rl": ["d4rl"],
        # Training behaviour policies (`diffplan data train-policy`); never needed to make
        # datasets from the shipped policies, to train or to plan.
        "datagen": ["stable-baselines3"],
        # stable-baselines3 here too, so that CI runs the train-policy test.
        # hypothesis: the fuzz test of the command line (tests/test_fuzz_cli.py).
        "dev": ["pytest", "ruff", "stable-baselines3", "hypothesis"],
    },
    # Shipped behaviour policies (weights-only files) and their cards, for `diffplan data mujoco`.
    package_data={"diffplan.tasks.locomotion": ["policies/*.pt", "policies/*.json"]},
    entry_points={"console_scripts": ["diffplan = diffplan.cli:main"]},
)
