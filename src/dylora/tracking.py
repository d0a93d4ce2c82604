"""Experiment tracking: nothing by default, or Weights & Biases (offline without a key).

A tracker never stops a run: the first failure of W&B (unreachable, misconfigured) is reported
once and tracking is switched off for the rest of the run.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from dylora.spec import LoggerSpec
from dylora.sweep import normalised_auc


class Tracker:
    """The no-op tracker; ``WandbTracker`` overrides what it records."""

    def log_step(self, step: int, rank: int | list[int], loss: float) -> None: ...

    def log_rank_curve(self, rows: list[tuple[int, str, str, float]], truncation: str = "prefix") -> None: ...

    def finish(self) -> None: ...


class WandbTracker(Tracker):
    def __init__(self, spec: LoggerSpec, config: dict[str, Any], run_dir: Path, name: str, group: str):
        self.run = None
        self._guard(self._init, spec, config, run_dir, name, group)

    def _init(self, spec: LoggerSpec, config, run_dir: Path, name: str, group: str) -> None:
        import wandb

        mode = spec.mode or os.environ.get("WANDB_MODE") or (None if os.environ.get("WANDB_API_KEY") else "offline")
        self.run = wandb.init(
            project=spec.project, entity=spec.entity, group=group, name=name, config=config,
            dir=str(run_dir), mode=mode, reinit="finish_previous",
            settings=wandb.Settings(init_timeout=_init_timeout(), silent=True),
        )

    def _guard(self, fn, *args) -> None:
        try:
            fn(*args)
        except Exception as e:  # W&B must never stop a run
            print(f"warning: W&B failed ({type(e).__name__}: {e}); continuing without it", file=sys.stderr)
            self.run = None

    def log_step(self, step: int, rank: int | list[int], loss: float) -> None:
        if self.run is not None:
            rank = rank if isinstance(rank, int) else sum(rank) / len(rank)  # a per-module draw: the mean rank
            self._guard(lambda: self.run.log({"train/loss": loss, "train/rank": rank}, step=step))

    def log_rank_curve(self, rows: list[tuple[int, str, str, float]], truncation: str = "prefix") -> None:
        if self.run is not None:
            self._guard(self._log_curve, rows, truncation)

    def _log_curve(self, rows, truncation: str) -> None:
        import wandb

        key = "rank_curve" if truncation == "prefix" else f"rank_curve_{truncation}"  # the paper's curve keeps its key
        how = "" if truncation == "prefix" else f", {truncation} truncation"
        table = wandb.Table(columns=["rank", "split", "metric", "value"], data=[list(r) for r in rows])
        logged: dict[str, Any] = {f"{key}/table": table}
        for split, metric in sorted({(r[1], r[2]) for r in rows}):
            points = [[r[0], r[3]] for r in rows if (r[1], r[2]) == (split, metric)]
            curve = wandb.Table(columns=["rank", metric], data=points)
            logged[f"{key}/{split}/{metric}"] = wandb.plot.line(curve, "rank", metric,
                                                                title=f"{metric} ({split}) by rank{how}")
            # the areas under the curve, over rank and over log2 rank, as run summaries to sort runs by
            ranks, values = [p[0] for p in points], [p[1] for p in points]
            self.run.summary[f"{key}/{split}/{metric}/auc"] = normalised_auc(ranks, values)
            self.run.summary[f"{key}/{split}/{metric}/auc_log2"] = normalised_auc(ranks, values, log2=True)
        self.run.log(logged)

    def finish(self) -> None:
        if self.run is not None:
            self._guard(self.run.finish)
            self.run = None


def _init_timeout() -> float:
    """Seconds W&B may take to start (WANDB_INIT_TIMEOUT, default 30): an unreachable server costs
    the run this long once, then the run goes on without tracking."""
    return float(os.environ.get("WANDB_INIT_TIMEOUT", "30"))


def make_tracker(spec: LoggerSpec, config: dict[str, Any], run_dir: Path, name: str, group: str) -> Tracker:
    return WandbTracker(spec, config, run_dir, name, group) if spec.name == "wandb" else Tracker()
