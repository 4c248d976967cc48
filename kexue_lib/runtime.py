"""Shared notebook setup: the FULL switch, the device, seeds and progress bars.

Every chapter starts with::

    from kexue_lib.runtime import FULL, device, seed_everything, progress
    seed_everything(0)

``FULL`` is read from the environment variable ``KEXUE_FULL`` (``1``, ``true`` or ``yes``
turn it on). Off by default: each notebook then runs a faithful small version of its
experiments in well under a minute on a laptop CPU. On, the article-scale version runs,
preferably on a GPU.

Progress bars are shown only when ``FULL`` is on or ``KEXUE_PROGRESS=1``: a bar writes
timings to the cell output, which would make stored outputs differ from run to run.
"""
from __future__ import annotations

import os
import random

import numpy as np
import torch

__all__ = ["FULL", "SHOW_PROGRESS", "device", "seed_everything", "progress", "env_flag"]


def env_flag(name: str, default: bool = False) -> bool:
    """Read a boolean switch from the environment (1/true/yes/on, case-insensitive)."""
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


FULL: bool = env_flag("KEXUE_FULL")
SHOW_PROGRESS: bool = FULL or env_flag("KEXUE_PROGRESS")


def device() -> torch.device:
    """``cuda`` when a GPU is visible, else ``cpu``."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int = 0) -> None:
    """Seed Python, NumPy and PyTorch (CPU and every GPU)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def progress(iterable, **kwargs):
    """``tqdm`` over ``iterable`` when progress bars are on; the bare iterable otherwise."""
    if not SHOW_PROGRESS:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, **kwargs)
