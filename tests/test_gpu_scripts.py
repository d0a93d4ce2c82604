"""scripts/gpu_bundle.sh and scripts/gpu_check.sh against the package: the only way the GPU check runs, so a
rename in dylora must fail here, not on the GPU machine. No download: the bundle runs with WHEELS=0."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from glue_fixtures import write_glue_dir
from helpers import REPO

BUNDLE = REPO / "scripts" / "gpu_bundle.sh"
CHECK = REPO / "scripts" / "gpu_check.sh"
pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def _bundle(target: Path, glue: Path, python: str = sys.executable) -> subprocess.CompletedProcess:
    env = {**os.environ, "GLUE_DIR": str(glue), "PY": python, "WHEELS": "0", "OMP_NUM_THREADS": "1"}
    return subprocess.run(["bash", str(BUNDLE), str(target)], env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def glue(tmp_path_factory) -> Path:
    return write_glue_dir(tmp_path_factory.mktemp("glue"), tasks=("mrpc", "stsb"), n_train=8, n_dev=4)


def test_the_bundle_holds_the_pins_the_data_and_minilm_in_fp16(tmp_path, glue):
    import torch
    from safetensors import safe_open
    from transformers import AutoModel, AutoTokenizer

    from dylora.bundled import minilm_path

    target = tmp_path / "gpu"
    result = _bundle(target, glue)
    assert result.returncode == 0, result.stderr[-3000:]
    pins = (target / "wheels" / "requirements.txt").read_text().split()
    assert pins == [f"{p}=={metadata.version(p)}" for p in
                    ("datasets", "dill", "multiprocess", "hydra-core", "omegaconf", "antlr4-python3-runtime")]
    for task in ("MRPC", "STS-B"):
        for split in ("train", "dev"):
            assert (target / "glue" / task / f"{split}.tsv").read_bytes() == (glue / task / f"{split}.tsv").read_bytes()
    with safe_open(target / "minilm" / "model.safetensors", "pt") as weights:
        assert {weights.get_tensor(k).dtype for k in weights.keys()} == {torch.float16}
    saved, source = AutoModel.from_pretrained(target / "minilm"), AutoModel.from_pretrained(minilm_path())
    for (name, a), (_, b) in zip(saved.state_dict().items(), source.state_dict().items()):
        torch.testing.assert_close(a.float(), b.half().float(), msg=name)
    text = "a check of the tokenizer"
    assert AutoTokenizer.from_pretrained(target / "minilm")(text) == AutoTokenizer.from_pretrained(minilm_path())(text)
    assert [p.name for p in tmp_path.iterdir()] == ["gpu"]  # the build folder renamed into place, nothing left


def test_a_failed_bundle_leaves_no_partial_folder_and_keeps_an_earlier_one(tmp_path, glue):
    failing = tmp_path / "python"  # the real interpreter, except for the MiniLM step (a script on stdin), which fails
    failing.write_text('#!/bin/sh\n[ "$1" = - ] && [ "$2" != datasets ] && exit 3\n'
                       f'exec {shlex.quote(sys.executable)} "$@"\n')
    failing.chmod(0o755)
    fresh = tmp_path / "fresh"
    result = _bundle(fresh, glue, str(failing))
    assert result.returncode != 0 and not fresh.exists()
    earlier = tmp_path / "earlier"
    (earlier / "minilm").mkdir(parents=True)
    (earlier / "minilm" / "config.json").write_text("{}")
    assert _bundle(earlier, glue, str(failing)).returncode != 0
    assert [p.relative_to(earlier).as_posix() for p in earlier.rglob("*")] == ["minilm", "minilm/config.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["earlier", "python"]  # no build folder left
    result = _bundle(fresh, tmp_path / "no-glue")
    assert result.returncode == 1 and "set GLUE_DIR" in result.stderr and not fresh.exists()


# ---------------------------------------------------------------------------- gpu_check.sh


def _command(module: str, end: str) -> list[str]:
    """The arguments gpu_check.sh passes to ``python -m module``, up to the variable ``end``, its variables
    set as on a CPU run."""
    script = CHECK.read_text().replace("\\\n", " ")
    match = re.search(rf'-m {re.escape(module)} (.*?)\${end}', script)
    assert match, f"gpu_check.sh no longer runs python -m {module} ... ${end}"
    values = {"BUNDLE": "/bundle", "RESULTS": "/results", "RUNS": "/runs", "DEVICE": "cpu", "EPOCHS": "2"}
    return [re.sub(r"\$(\w+)", lambda m: values[m.group(1)], a) for a in shlex.split(match.group(1))]


def test_gpu_check_runs_the_bench_with_options_it_has():
    from dylora.lab.bench import parse_options, parser

    args = _command("dylora.lab.bench", "BENCH_ARGS")
    opts, child = parse_options([*args, "--repeats=2", "--batch=4", "--seq=32"])  # the script's BENCH_ARGS example
    assert (opts.device, opts.model_path, opts.out, child) == ("cpu", "/bundle/minilm", "/results/bench.json", None)
    if "--real OVERRIDE" in parser().format_help():  # the real run: from the bundle, as the script detects it
        real = re.search(r"REAL_ARGS=\((--real.*?)\)", CHECK.read_text().replace("\\\n", " "), re.S)
        opts, _ = parse_options([*args, *(a.replace("$BUNDLE", "/bundle") for a in shlex.split(real.group(1)))])
        assert "data.glue_dir=/bundle/glue" in opts.real and "model.path=/bundle/minilm" in opts.real


def test_gpu_check_runs_configurations_that_compose(tmp_path):
    from dylora.cli.compose import compose_config
    from dylora.lab.search_cost import expand
    from dylora.spec import RunSpec

    args = _command("dylora.run -m", "RUN_ARGS")
    jobs = expand([a.replace("/runs", str(tmp_path)) for a in args])
    specs = [RunSpec.from_dict(compose_config(job)) for job in jobs]
    assert sorted((s.task.name, s.method_name) for s in specs) == [
        ("mrpc", "dylora"), ("mrpc", "lora"), ("stsb", "dylora"), ("stsb", "lora")]
    assert {(s.model.path, s.data.glue_dir, s.trainer.precision, s.trainer.device, s.trainer.epochs) for s in specs} \
        == {("/bundle/minilm", "/bundle/glue", "bf16", "cpu", 2)}
    text = CHECK.read_text()
    assert "-m dylora.cli.report experiment=table1_cpu" in text and "experiment=table1_cpu" in " ".join(args)
    assert "tests/test_precision.py" in text and (REPO / "tests" / "test_precision.py").is_file()
    assert "@pytest.mark.gpu" in (REPO / "tests" / "test_precision.py").read_text()
