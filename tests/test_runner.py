"""dylora-run end to end on tiny-roberta and small GLUE-layout folders the tests write."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dylora import records
from dylora.cli.compose import compose_config, compose_spec
from dylora.errors import ConfigError
from dylora.runner import execute
from dylora.spec import RunSpec
from glue_fixtures import ALL_TASKS, write_glue_dir
from helpers import run_cli, tiny_overrides

EXPECTED_METRICS = {
    "cola": {"accuracy", "matthews_correlation"},
    "mrpc": {"accuracy", "f1"},
    "qqp": {"accuracy", "f1"},
    "stsb": {"pearson", "spearman"},
}


def only_run(root: Path) -> records.RunRecord:
    runs = list(records.iter_runs(root))
    assert len(runs) == 1, [r.path for r in runs]
    return runs[0]


@pytest.mark.slow
def test_multirun_over_all_eight_glue_formats_writes_complete_records(tmp_path, glue_dir):
    out = tmp_path / "exp"
    result = run_cli(["-m", f"task={','.join(ALL_TASKS)}", f"data.glue_dir={glue_dir}", f"out_dir={out}",
                      *tiny_overrides()],
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = {r.task: r for r in records.iter_runs(out)}
    assert sorted(runs) == sorted(ALL_TASKS)
    for task, run in runs.items():
        assert run.done and run.problem is None, (task, run.problem)
        assert run.path.parent.parent.parent.name == "default"  # <out>/<experiment>/<task>/<method>/<seed-hash>
        splits = {"validation_matched", "validation_mismatched"} if task == "mnli" else {"validation"}
        metrics = EXPECTED_METRICS.get(task, {"accuracy"})
        got = {(m.rank, m.split, m.metric) for m in run.metrics}
        assert got == {(r, s, m) for r in (0, 1, 2) for s in splits for m in metrics}  # 0: the adapter off
        assert all(m.task == task and m.method == "dylora" and m.seed == 0 for m in run.metrics)
        assert (run.path / records.ADAPTER).stat().st_size > 0
        assert run.env["trainable_parameters"]["adapter"] == 2 * 1 * 2 * (32 + 32)  # q, v x 1 layer x r_max 2
        assert run.env["train_steps"] == 3
        assert not (run.path / records.CHECKPOINT).exists()
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "multirun").exists()  # Hydra litters nothing


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_one_clear_error(tmp_path, glue_dir):
    spec = compose_spec(tiny_overrides("task=sst2", f"data.glue_dir={glue_dir}", f"out_dir={tmp_path}",
                                       "trainer.device=cuda"))
    with pytest.raises(ConfigError, match="^trainer.device=cuda but PyTorch sees no CUDA device here; use trainer"):
        execute(spec, progress=False)


def test_identical_configuration_is_skipped(tmp_path, glue_dir, capsys):
    spec = compose_spec(tiny_overrides("task=sst2", f"data.glue_dir={glue_dir}", f"out_dir={tmp_path}"))
    run_dir = execute(spec, progress=False)
    stamps = {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()}
    assert execute(spec, progress=False) == run_dir
    assert "skip:" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()} == stamps
    other = compose_spec(tiny_overrides("task=sst2", f"data.glue_dir={glue_dir}", f"out_dir={tmp_path}",
                                        "method.alpha=8"))
    assert records.run_dir_for(tmp_path, other.config) != run_dir  # a variant never collides


def test_run_directory_name_ignores_output_paths(glue_dir):
    a = compose_config(tiny_overrides(f"data.glue_dir={glue_dir}", "out_dir=/a"))
    b = compose_config(tiny_overrides(f"data.glue_dir={glue_dir}", "out_dir=/b"))
    assert records.run_dir_for("x", a) == records.run_dir_for("x", b)
    assert records.run_dir_for("x", a).parts[1:4] == ("default", "sst2", "dylora")


@pytest.mark.slow
@pytest.mark.parametrize("precision", [[], ["trainer.precision=bf16", "model.dtype=bf16"]], ids=["fp32", "bf16"])
def test_sigkilled_run_resumes_and_ends_with_identical_metrics(tmp_path, glue_dir, precision):
    args = tiny_overrides("task=sst2", f"data.glue_dir={glue_dir}", "trainer.max_steps=60",
                          "trainer.checkpoint_every=5",
                          "data.max_train_samples=40", "++model.tiny.hidden_dropout_prob=0.1", *precision)
    reference = execute(compose_spec([*args, f"out_dir={tmp_path / 'reference'}"]), progress=False)

    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}  # as the in-process reference
    proc = subprocess.Popen([sys.executable, "-m", "dylora.run", *args, f"out_dir={out}"], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pointer = None
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        found = list(out.rglob("checkpoint/latest.json"))
        if found and json.loads(found[0].read_text())["file"] != "state-5.safetensors":
            pointer = found[0]
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert pointer is not None, "the run finished or never checkpointed before it could be killed"
    run_dir = pointer.parent.parent
    assert not (run_dir / records.DONE).exists()

    resumed = run_cli([*args, f"out_dir={out}"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from step" in resumed.stderr
    assert (run_dir / records.METRICS).read_text() == (reference / records.METRICS).read_text()
    got, want = load_file(run_dir / records.ADAPTER), load_file(reference / records.ADAPTER)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def test_wandb_offline_run_holds_the_rank_table(tmp_path, glue_dir, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    spec = compose_spec(tiny_overrides("task=sst2", f"data.glue_dir={glue_dir}", f"out_dir={tmp_path}", "logger=wandb"))
    run_dir = execute(spec, progress=False)
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1
    tables = list(offline[0].rglob("*.table.json"))
    assert tables, "no W&B table was written"
    full = [json.loads(t.read_text()) for t in tables
            if json.loads(t.read_text())["columns"] == ["rank", "split", "metric", "value"]]
    assert full and sorted({row[0] for row in full[0]["data"]}) == [0, 1, 2]  # rank 0: the adapter off
    import wandb

    assert wandb.run is None  # the job finished its W&B run


# ---------------------------------------------------------------------------- truncations


def test_one_training_is_evaluated_under_each_truncation(tmp_path, glue_dir):
    spec = compose_spec(tiny_overrides("task=sst2", f"data.glue_dir={glue_dir}", f"out_dir={tmp_path}",
                                       "eval.truncation=[prefix,svd]", "method.eval_ranks=[1,2]"))
    run = records.read_run(execute(spec, progress=False))
    rows = {(m.truncation, m.rank, m.split, m.metric): m.value for m in run.metrics}
    # accuracy at ranks 1, 2 under each, and once at rank 0 (the adapter off)
    assert {t for t, *_ in rows} == {"prefix", "svd"} and len(rows) == 2 * 2 + 1 and ("prefix", 0, "validation",
                                                                                       "accuracy") in rows
    assert rows[("svd", 2, "validation", "accuracy")] == rows[("prefix", 2, "validation", "accuracy")]  # b = r_max
    assert set(run.env["sweep_seconds_by_truncation"]) == {"prefix", "svd"}
    assert run.env["sweep_seconds"] == pytest.approx(sum(run.env["sweep_seconds_by_truncation"].values()))


def test_a_finished_run_asked_for_another_truncation_is_evaluated_without_training_again(tmp_path, glue_dir, capsys):
    args = tiny_overrides("task=sst2", f"data.glue_dir={glue_dir}", "method.r_max=3", "trainer.max_steps=6")
    first = execute(compose_spec([*args, f"out_dir={tmp_path / 'a'}"]), progress=False)
    before = records.read_run(first)
    adapter = (first / records.ADAPTER).read_bytes()
    again = execute(compose_spec([*args, f"out_dir={tmp_path / 'a'}", "eval.truncation=[prefix,svd]"]),
                    progress=False)
    assert again == first and "evaluating the finished" in capsys.readouterr().err  # same run, no new folder
    after = records.read_run(first)
    assert after.done and (first / records.ADAPTER).read_bytes() == adapter
    assert after.env["train_seconds"] == before.env["train_seconds"]  # not trained again
    assert after.metrics[: len(before.metrics)] == before.metrics
    assert after.config["eval"]["truncation"] == ["prefix", "svd"]
    # ... and its SVD rows are those of a run trained with both truncations from the start
    fresh = execute(compose_spec([*args, f"out_dir={tmp_path / 'b'}", "eval.truncation=[prefix,svd]"]),
                    progress=False)
    svd = [m for m in after.metrics if m.truncation == "svd"]
    assert svd and svd == [m for m in records.read_run(fresh).metrics if m.truncation == "svd"]
    execute(compose_spec([*args, f"out_dir={tmp_path / 'a'}", "eval.truncation=svd"]), progress=False)
    assert "skip:" in capsys.readouterr().err  # it has SVD rows now


def test_per_module_sampling_trains_each_module_at_its_own_drawn_rank(tmp_path, glue_dir):
    from dylora.adapters import AdapterConfig, rank_schedule

    spec = compose_spec(tiny_overrides("task=sst2", f"data.glue_dir={glue_dir}", f"out_dir={tmp_path}",
                                       "method=dylora_per_module", "method.r_max=4", "trainer.max_steps=8"))
    assert spec.adapter.sampling == "per_module"
    run = records.read_run(execute(spec, progress=False))
    assert run.done and {m.rank for m in run.metrics} == {0, 1, 2, 3, 4}
    # the recorded rank sequence is the per-module draw of each step over the model's adapters, in model order
    modules = ["roberta.encoder.layer.0.attention.self.query", "roberta.encoder.layer.0.attention.self.value"]
    schedule = rank_schedule(AdapterConfig(r_max=4, sampling="per_module"), spec.seed, modules)
    steps = [list(schedule(step).values()) for step in range(8)]
    digest = hashlib.sha256(json.dumps(steps).encode()).hexdigest()
    assert run.env["rank_sequence_sha256"] == [digest]
    assert any(len(set(step)) > 1 for step in steps)  # the modules did train at different ranks


# ---------------------------------------------------------------------------- bad input


def test_invalid_values_are_refused_before_anything_runs(glue_dir):
    cases = [
        (["method.r_min=3"], "r_min=3 is larger than r_max=2"),
        (["method.eval_ranks=[0,2]"], r"eval_ranks=\[0, 2\] must be a list of whole ranks within 1..r_max=2"),
        (["method.eval_ranks=[3]"], r"within 1..r_max=2"),
        (["method.eval_ranks=[1.5,2]"], r"eval_ranks=\[1.5, 2\] must be a list of whole ranks"),  # not rank 1
        (["method.eval_ranks=[a]"], r"eval_ranks=\['a'\] must be a list of whole ranks"),
        (["method.eval_ranks=2"], r"eval_ranks=2 must be a list of whole ranks .* e.g. method.eval_ranks=\[1,2,2\]"),
        (["model.path=/tmp"], r"model=tiny-roberta has random weights and reads no folder: drop model.path=/tmp"),
        (["trainer.lr=-1"], r"trainer.lr=-1"),
        (["+method.rank=3"], r"unknown adapter option\(s\) \['rank'\]"),
        (["seed=-1"], "seed=-1"),
        (["eval.truncation=top"], r"eval.truncation=top must be one of prefix, svd or a list of them"),
        (["eval.truncation=[]"], r"eval.truncation=\[\] must be one of prefix, svd"),
    ]
    for extra, message in cases:
        with pytest.raises(ConfigError, match=message):
            RunSpec.from_dict(compose_config(tiny_overrides(f"data.glue_dir={glue_dir}", *extra)))


def _bad_glue_dirs(root: Path) -> dict[str, tuple[Path, str, str]]:
    """name -> (glue_dir, task, expected message fragment)."""
    cases = {}
    missing = write_glue_dir(root / "missing", tasks=("rte",), n_train=8, n_dev=4)
    (missing / "RTE" / "dev.tsv").unlink()
    cases["missing file"] = (missing, "rte", "RTE/dev.tsv")
    malformed = write_glue_dir(root / "malformed", tasks=("sst2",), n_train=8, n_dev=4)
    with open(malformed / "SST-2" / "train.tsv", "a") as f:
        f.write("a row without its label\n")
    cases["malformed row"] = (malformed, "sst2", "train.tsv, line 10")
    label = write_glue_dir(root / "label", tasks=("cola",), n_train=8, n_dev=4)
    lines = (label / "CoLA" / "dev.tsv").read_text().splitlines()
    parts = lines[2].split("\t")
    parts[1] = "7"
    lines[2] = "\t".join(parts)
    (label / "CoLA" / "dev.tsv").write_text("\n".join(lines) + "\n")
    cases["label out of range"] = (label, "cola", "dev.tsv, line 3")
    empty = write_glue_dir(root / "empty", tasks=("sst2",), n_train=8, n_dev=4)
    (empty / "SST-2" / "dev.tsv").write_text("sentence\tlabel\n")
    cases["empty split"] = (empty, "sst2", "dev.tsv")
    return cases


@pytest.mark.slow
def test_bad_input_stops_with_one_clear_message_and_keeps_finished_results(tmp_path, glue_dir):
    out = tmp_path / "exp"
    good = run_cli(["task=sst2", f"data.glue_dir={glue_dir}", f"out_dir={out}", *tiny_overrides()], cwd=tmp_path)
    assert good.returncode == 0, good.stderr[-3000:]
    finished = only_run(out)
    stamps = {p.name: p.stat().st_mtime_ns for p in finished.path.iterdir()}

    cases = {name: ([f"task={task}", f"data.glue_dir={d}"], fragment)
             for name, (d, task, fragment) in _bad_glue_dirs(tmp_path).items()}
    cases["unknown model"] = (["model=gpt5"], "tiny-roberta")
    cases["unknown task"] = (["task=squad"], "sst2")
    cases["unknown method"] = (["method=dora"], "dylora_frozen")
    cases["r_min > r_max"] = (["method.r_min=3", f"data.glue_dir={glue_dir}"], "r_min=3 is larger than r_max=2")
    cases["eval rank outside"] = (["method.eval_ranks=[5]", f"data.glue_dir={glue_dir}"], "eval_ranks=[5]")
    cases["NaN loss"] = ([f"data.glue_dir={glue_dir}", "trainer.lr=1e30", "trainer.max_grad_norm=null",
                          "trainer.max_steps=20"],
                         "the training loss became nan")
    for name, (extra, fragment) in cases.items():
        result = run_cli([*tiny_overrides(*extra), f"out_dir={out}"], cwd=tmp_path)
        assert result.returncode == 1, (name, result.stderr[-2000:])
        assert fragment in result.stderr, (name, result.stderr[-2000:])
        assert "Traceback" not in result.stderr, (name, result.stderr[-2000:])

    assert records.verify_done(finished.path)
    assert {p.name: p.stat().st_mtime_ns for p in finished.path.iterdir()} == stamps


def test_corrupted_record_is_reported_moved_aside_and_rerun(tmp_path, glue_dir, capsys):
    spec = compose_spec(tiny_overrides("task=sst2", f"data.glue_dir={glue_dir}", f"out_dir={tmp_path}"))
    run_dir = execute(spec, progress=False)
    with open(run_dir / records.METRICS, "a") as f:
        f.write('{"task": "sst2"}\n')
    assert execute(spec, progress=False) == run_dir
    err = capsys.readouterr().err
    assert "does not match the checksum" in err and "running it again" in err
    assert records.verify_done(run_dir)
    assert len(list(run_dir.parent.glob(f"{run_dir.name}.corrupt-*"))) == 1


def test_python_dash_m_and_console_script_are_the_same_app(tmp_path):
    via_module = run_cli(["--help"], cwd=tmp_path)
    assert via_module.returncode == 0 and "model: " in via_module.stdout and "tiny-roberta" in via_module.stdout
    script = Path(sys.executable).parent / "dylora-run"
    via_script = subprocess.run([str(script), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert via_script.returncode == 0 and via_script.stdout == via_module.stdout


def test_a_run_records_and_hashes_its_own_per_task_values_only(tmp_path):
    base = tiny_overrides("task=rte", f"out_dir={tmp_path}")
    plain = compose_spec(base)
    other_task = compose_spec(base + ["+trainer.per_task.cola.epochs=7"])
    own = compose_spec(base + ["+trainer.per_task.rte.lr=0.01", "+trainer.per_task.rte.epochs=5"])
    assert records.run_dir_for(tmp_path, other_task.config) == records.run_dir_for(tmp_path, plain.config)
    assert records.run_dir_for(tmp_path, own.config) != records.run_dir_for(tmp_path, plain.config)
    assert own.config["trainer"]["lr"] == own.trainer.lr == 0.01 and own.config["trainer"]["epochs"] == 5
    assert "per_task" not in own.config["trainer"] and own.config["task"] == plain.config["task"]


def test_init_from_takes_the_finished_mnli_adapter_and_refuses_when_it_is_missing(tmp_path, glue_dir):
    from safetensors.torch import load_file

    from dylora import adapter_layers, add_adapters
    from dylora.models import load_model, load_tokenizer
    from dylora.runner import _init_from

    mrpc = compose_spec(tiny_overrides("task=mrpc", f"data.glue_dir={glue_dir}", f"out_dir={tmp_path}",
                                       "+trainer.per_task.mrpc.init_from=mnli"))
    assert mrpc.trainer.init_from == "mnli"  # per_task values apply to their task only

    def fresh_model():
        tokenizer = load_tokenizer(mrpc.model)
        return add_adapters(load_model(mrpc.model, tokenizer, 2), mrpc.adapter)

    with pytest.raises(ConfigError, match="run task=mnli first"):
        _init_from(mrpc, fresh_model())
    mnli_dir = execute(compose_spec(tiny_overrides("task=mnli", f"data.glue_dir={glue_dir}", f"out_dir={tmp_path}")),
                       progress=False)
    model = fresh_model()
    _init_from(mrpc, model)
    saved = load_file(str(mnli_dir / records.ADAPTER))
    for name, layer in adapter_layers(model):
        assert torch.equal(layer.lora_A, saved[f"{name}.lora_A"]) and torch.equal(layer.lora_B, saved[f"{name}.lora_B"])
        assert saved[f"{name}.lora_B"].abs().sum() > 0


@pytest.mark.slow
def test_the_same_run_started_twice_at_once_trains_once(tmp_path, glue_dir):
    # long enough (checkpointing every step) that the second process reaches the lock while the first trains
    args = [*tiny_overrides("task=sst2", f"data.glue_dir={glue_dir}", "trainer.max_steps=150",
                            "trainer.checkpoint_every=1"), f"out_dir={tmp_path / 'exp'}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "dylora.run", *args], cwd=tmp_path, env=env, text=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _ in range(2)]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    assert not any("Traceback" in e for e in errs), errs
    assert sum("done:" in e for e in errs) == 1 and sum("skip:" in e for e in errs) == 1, errs
    assert any("is being run by another process" in e for e in errs), errs  # the second one waited
    assert records.verify_done(only_run(tmp_path / "exp").path)
