"""Helpers the tests import: a tiny run's overrides, and the real CLI run as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]

# A run small enough for a unit test: one-layer RoBERTa, two ranks, three steps.
TINY = [
    "model=tiny-roberta",
    "model.max_length=32",
    "model.tiny.hidden_size=32",
    "model.tiny.num_hidden_layers=1",
    "model.tiny.intermediate_size=64",
    "model.tiny.num_attention_heads=2",
    "method.r_max=2",
    "method.alpha=4",
    "trainer.max_steps=3",
    "trainer.batch_size=4",
    "trainer.eval_batch_size=16",
    "data.max_train_samples=16",
    "data.max_eval_samples=12",
    "seed=0",
]


def tiny_overrides(*extra: str) -> list[str]:
    """TINY with ``extra`` applied after it (later overrides of the same key win)."""
    keys = {e.split("=", 1)[0].lstrip("+") for e in extra}
    return [o for o in TINY if o.split("=", 1)[0].lstrip("+") not in keys] + list(extra)


def run_cli(args: list[str], *, cwd: Path, env: dict | None = None, timeout: float = 300, module: str = "dylora.run",
            command: list[str] | None = None):
    """Run ``python -m <module> args`` (or ``command args``) as a user would; returns the CompletedProcess."""
    # The test process's thread count: results compared with in-process runs are then bitwise equal.
    threads = str(torch.get_num_threads())
    full_env = {**os.environ, "OMP_NUM_THREADS": threads, "HYDRA_FULL_ERROR": "0", **(env or {})}
    return subprocess.run([*(command or [sys.executable, "-m", module]), *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
