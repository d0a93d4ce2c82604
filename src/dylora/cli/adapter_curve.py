"""``dylora-adapter-curve``: the rank curve of any PEFT LoRA adapter, as a run record like a trained run's.

    dylora-adapter-curve ADAPTER_DIR model=minilm task=mrpc data.glue_dir=../shared/data/glue
                         [model.path=DIR] [out_dir=experiments] [logger=wandb] [eval.truncation=prefix]
                         [--export-rank B [--export-truncation svd] [--export-to DIR]]

The adapter (``adapter_config.json`` + ``adapter_model.safetensors``, as PEFT's ``save_pretrained``
writes them) is read into dylora's layers on the base model and task the overrides compose (the same
config groups as ``dylora-run``), then evaluated at every rank 1..r, by default under both truncations
(``prefix``: its first b rows; ``svd``: its best rank-b approximation). The record goes to
``<out_dir>/adapter_curve/<task>/peft_lora/seed<seed>-<hash>/`` (the adapter's path and sha256 are part
of its configuration), so ``dylora-report`` renders it as "PEFT LoRA adapter" beside any other run, and
W&B logs it as a run. ``--export-rank B`` then writes the adapter at rank B as a smaller PEFT adapter.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors import SafetensorError

from dylora import records
from dylora.adapters import TRUNCATIONS, export_peft
from dylora.adapters.io import PeftLora, load_peft_lora, read_peft_lora
from dylora.cli.compose import compose_config
from dylora.errors import ConfigError, check_folder_name, one_line_errors
from dylora.lab.report.experiments import metric_scale
from dylora.spec import RunSpec

EXPERIMENT = "adapter_curve"  # the experiment name when the overrides pick none


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dylora-adapter-curve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    p.add_argument("adapter", type=Path, help="a PEFT LoRA adapter directory")
    p.add_argument("overrides", nargs="*", metavar="OVERRIDE", help="dylora-run overrides: model=, task=, data.*")
    p.add_argument("--export-rank", type=int, metavar="B", help="also write the adapter at rank B as a PEFT adapter")
    p.add_argument("--export-truncation", choices=TRUNCATIONS, default="svd",
                   help="how the exported rank is taken (default: %(default)s, the best rank-B approximation)")
    p.add_argument("--export-to", type=Path, metavar="DIR", help="default: <adapter>-r<B>-<truncation>")
    return p


def curve_spec(adapter: PeftLora, adapter_dir: Path, overrides: list[str]) -> RunSpec:
    """The run the adapter's curve is recorded as: plain LoRA at its r and alpha on exactly its modules."""
    config = compose_config(["method=peft_lora", "eval.truncation=[prefix,svd]", *overrides])
    if config["experiment"] == "default":
        config["experiment"] = EXPERIMENT
    config["method"].update(r_max=adapter.r, r_min=1, alpha=adapter.lora_alpha, target_modules=sorted(adapter.factors))
    weights = adapter_dir / "adapter_model.safetensors"
    config["source_adapter"] = {"path": str(adapter_dir.resolve()), "sha256": records.sha256_file(weights)}
    return RunSpec.from_dict(config)


def main(argv: list[str] | None = None) -> None:
    from dylora.runner import execute, load_finished

    args = parser().parse_intermixed_args(argv)
    with one_line_errors("dylora-adapter-curve"):
        adapter = read_adapter(args.adapter)
        to = None
        if args.export_rank is not None:  # checked before the evaluation, which takes the time
            if not 1 <= args.export_rank <= adapter.r:
                raise ConfigError(f"--export-rank {args.export_rank} must be a rank within 1..{adapter.r} (the "
                                  f"adapter's r), e.g. --export-rank {max(1, adapter.r // 2)}")
            to = args.export_to or export_folder(args.adapter, args.export_rank, args.export_truncation)
        spec = curve_spec(adapter, args.adapter, args.overrides)
        run_dir = execute(spec, load=lambda model: load_peft_lora(model, adapter))
        print(curve_table(records.read_run(run_dir)))
        print(f"wrote {run_dir}")
        if to is not None:
            model, _ = load_finished(spec, run_dir, torch.device("cpu"))
            export_peft(model, args.export_rank, to, adapter.base_model_name_or_path, args.export_truncation)
            print(f"wrote the adapter at rank {args.export_rank} ({args.export_truncation}) to {to}")


def read_adapter(adapter_dir: Path) -> PeftLora:
    """``read_peft_lora``, with a damaged file (truncated safetensors, a config that is not JSON) named in one
    line instead of the reader's traceback."""
    try:
        return read_peft_lora(adapter_dir)
    except SafetensorError as e:
        raise ConfigError(f"{adapter_dir / 'adapter_model.safetensors'} cannot be read ({e}): the file is damaged "
                          "or was copied only in part; save or copy the adapter again") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{adapter_dir / 'adapter_config.json'} is not valid JSON ({e}): the file is damaged "
                          "or was copied only in part; save or copy the adapter again") from None


def export_folder(adapter_dir: Path, rank: int, truncation: str) -> Path:
    """The default ``--export-to``: ``<adapter>-r<B>-<truncation>`` beside the adapter (its resolved name, so
    that ``.`` or ``..`` name the folder they are)."""
    folder = adapter_dir.resolve()
    if not folder.name:
        raise ConfigError(f"the adapter folder {folder} has no name to name its export after; pass --export-to DIR")
    return folder.with_name(f"{check_folder_name('--export-to', f'{folder.name}-r{rank}-{truncation}')}")


def curve_table(record: records.RunRecord) -> str:
    """The curve as Markdown: one row per rank, a column per split, metric and truncation."""
    columns = sorted({(m.truncation, m.split, m.metric) for m in record.metrics}, key=lambda c: (c[1], c[2], c[0]))
    values = {(m.rank, m.truncation, m.split, m.metric): m.value for m in record.metrics}
    ranks = sorted({m.rank for m in record.metrics})
    if not ranks:
        raise ConfigError(f"{record.path} has no metrics")
    scale = {c: metric_scale(record.task, c[2]) for c in columns}
    lines = ["| rank | " + " | ".join(f"{s} {m}{' (%)' if scale[(t, s, m)] == 100 else ''} ({t})"
                                      for t, s, m in columns) + " |",
             "| --- |" + " --- |" * len(columns)]
    lines += [f"| {b if b else '0 (adapter off)'} | "
              + " | ".join(f"{values.get((b, *c), float('nan')) * scale[c]:.2f}" for c in columns) + " |"
              for b in ranks]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
