"""dylora-run on tiny-gpt2 for E2E, DART and WebNLG: training, decoding at every rank, scoring, saved outputs."""

from __future__ import annotations

import math

import pytest
import torch

from dylora import records
from dylora.adapters import load_adapter, merged
from dylora.cli.compose import compose_spec
from dylora.errors import ConfigError, DataError
from dylora.generation import generate_batch, postprocess
from dylora.models import load_model, load_tokenizer
from dylora.runner import execute
from dylora.tasks.nlg import load_nlg
from dylora.tasks.nlg_task import smoothed_lm_loss
from dylora.tasks.registry import build_task
from helpers import run_cli
from nlg_fixtures import write_nlg_dir

N_ITEMS = 4  # WebNLG fixture: items 0, 2 seen, 1, 3 unseen
METRICS = {"e2e": {"bleu", "nist", "meteor", "rouge_l", "cider"}, "dart": {"bleu", "meteor", "ter"},
           "webnlg": {"bleu", "meteor", "ter"}}
SPLITS = {"e2e": {"test": N_ITEMS}, "dart": {"test": N_ITEMS},
          "webnlg": {"test_all": N_ITEMS, "test_seen": N_ITEMS // 2, "test_unseen": N_ITEMS // 2}}


def nlg_overrides(task: str, nlg_dir, out_dir, *extra: str) -> list[str]:
    return [
        f"task={task}", "model=tiny-gpt2", "model.max_length=64", "model.tiny.n_embd=32", "model.tiny.n_layer=1",
        "model.tiny.n_head=2", "method.r_max=2", "method.alpha=4", "trainer.max_steps=4", "trainer.batch_size=4",
        "trainer.lr=1e-2", "trainer.eval_batch_size=8", "trainer.warmup_steps=3", "trainer.label_smoothing=0.1",
        "task.num_beams=2", "task.max_new_tokens=8", f"data.nlg_dir={nlg_dir}", f"data.max_eval_samples={N_ITEMS}",
        "seed=0", f"out_dir={out_dir}", *extra,
    ]


def test_nlg_paper_experiment_is_the_papers_gpt2_setting():
    spec = compose_spec(["experiment=nlg_paper", "task=webnlg"])
    assert (spec.model.hub_id, spec.model.family, spec.model.max_length) == (
        "openai-community/gpt2-medium", "decoder", 512)
    t = spec.trainer
    assert (t.epochs, t.batch_size, t.lr, t.weight_decay, t.warmup_steps, t.label_smoothing, t.max_grad_norm) == (
        5, 8, 2e-4, 0.01, 500, 0.1, None)
    assert (spec.adapter.r_max, spec.adapter.alpha, spec.adapter.dropout) == (4, 32, 0.1)
    task = spec.task.options
    assert (task.num_beams, task.length_penalty, task.no_repeat_ngram_size, task.max_new_tokens) == (10, 0.8, 4, 64)
    assert task.webnlg_subsets == ["all", "seen", "unseen"] and spec.eval_ranks == [1, 2, 3, 4]


def test_smoothed_loss_is_loras_formula_over_target_tokens():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[-100, -100, 3, 1, 6], [-100, 2, 4, -100, -100]])
    eps = 0.1
    # LoRA model.py: shifted targets, (1 - eps) * nll + eps * mean(-logp), summed over the mask / mask count.
    logp = torch.log_softmax(logits[:, :-1], dim=-1)
    target = labels[:, 1:]
    mask = (target != -100).float()
    nll = -logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    expected = (((1 - eps) * nll + eps * -logp.mean(-1)) * mask).sum() / mask.sum()
    assert torch.allclose(smoothed_lm_loss(logits, labels, eps), expected, atol=1e-6)
    # eps = 0 is the model's own causal-LM loss
    plain = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 7), target.reshape(-1), ignore_index=-100)
    assert torch.allclose(smoothed_lm_loss(logits, labels, 0.0), plain)


def test_nlg_task_data_has_target_only_labels_and_the_smoothing_hook(tmp_path):
    nlg_dir = write_nlg_dir(tmp_path / "data", "dart", n_items=N_ITEMS)
    spec = compose_spec(nlg_overrides("dart", nlg_dir, tmp_path / "exp"))
    tokenizer = load_tokenizer(spec.model)
    data = build_task(spec, load_model(spec.model, tokenizer), tokenizer, "cpu", tmp_path)
    pairs = load_nlg("dart", nlg_dir, splits=("train",))["train"]
    assert len(data.train) == len(pairs) == N_ITEMS * 2
    batch = data.collate(data.train[:2])
    prompt = len(tokenizer.encode(pairs[0].prompt)) + 1  # + the end-of-text separator
    assert (batch["labels"][0, :prompt] == -100).all() and (batch["labels"][0, prompt:][:3] != -100).all()
    logits = torch.randn(*batch["input_ids"].shape, len(tokenizer))
    assert torch.allclose(data.loss(logits, batch["labels"]), smoothed_lm_loss(logits, batch["labels"], 0.1))
    no_smoothing = compose_spec(nlg_overrides("dart", nlg_dir, tmp_path / "exp", "trainer.label_smoothing=0"))
    assert build_task(no_smoothing, None, tokenizer, "cpu").loss is None


def redecode(spec, run_dir, rank: int, prompts: list[str]) -> list[str]:
    """An independent decode at ``rank``: the saved adapter on a fresh base model, merged at that rank."""
    tokenizer = load_tokenizer(spec.model)
    model = load_adapter(load_model(spec.model, tokenizer), run_dir / records.ADAPTER)
    t = spec.task.options
    with merged(model, rank):
        texts = generate_batch(model, tokenizer, prompts, num_beams=t.num_beams, length_penalty=t.length_penalty,
                               no_repeat_ngram_size=t.no_repeat_ngram_size, max_new_tokens=t.max_new_tokens,
                               max_prompt_tokens=spec.model.max_length - t.max_new_tokens)
    return [postprocess(x, spec.task.name) for x in texts]


@pytest.mark.slow
@pytest.mark.parametrize("task", ["e2e", "dart", "webnlg"])
def test_every_format_trains_decodes_every_rank_and_saves_outputs(task, tmp_path, monkeypatch):
    import dylora.train

    warmups = []
    real = dylora.train.lr_factor
    monkeypatch.setattr(dylora.train, "lr_factor", lambda s, total, w: warmups.append(w) or real(s, total, w))
    nlg_dir = write_nlg_dir(tmp_path / "data", task, n_items=N_ITEMS)
    spec = compose_spec(nlg_overrides(task, nlg_dir, tmp_path / "exp"))
    run_dir = execute(spec, progress=False)
    assert set(warmups) == {3}  # trainer.warmup_steps, not the ratio (0.06 x 4 steps: 1)
    run = records.read_run(run_dir)
    assert run.done and run.env["train_steps"] == 4
    got = {(m.rank, m.split, m.metric) for m in run.metrics}
    assert got == {(r, s, m) for r in (0, 1, 2) for s in SPLITS[task] for m in METRICS[task]}  # 0: adapter off
    assert all(math.isfinite(m.value) for m in run.metrics)
    items = load_nlg(task, nlg_dir, splits=("test",), max_eval_samples=N_ITEMS)["test"]
    outputs = run_dir / "outputs"
    for split, n in SPLITS[task].items():
        refs = (outputs / f"{split}.references.txt").read_text().split("\n\n")
        assert len(refs) == n and all(len(group.strip().splitlines()) == 2 for group in refs)
        for rank in (0, 1, 2):
            assert len((outputs / f"rank{rank}.{split}.txt").read_text().splitlines()) == n
    for rank in (1, 2):
        main = "test_all" if task == "webnlg" else "test"
        saved = (outputs / f"rank{rank}.{main}.txt").read_text().splitlines()
        assert saved == redecode(spec, run_dir, rank, [it.prompt for it in items])


@pytest.mark.slow
def test_recorded_scores_are_the_metric_of_the_saved_outputs(tmp_path):
    from dylora.metrics.nlg import dart_webnlg_metrics

    nlg_dir = write_nlg_dir(tmp_path / "data", "webnlg", n_items=N_ITEMS)
    run_dir = execute(compose_spec(nlg_overrides("webnlg", nlg_dir, tmp_path / "exp", "trainer.max_steps=2")),
                      progress=False)
    recorded = {(m.rank, m.split, m.metric): m.value for m in records.read_metrics(run_dir)}
    out = run_dir / "outputs"
    for split in ("test_seen", "test_unseen"):
        refs = [g.strip().splitlines() for g in (out / f"{split}.references.txt").read_text().split("\n\n")]
        preds = (out / f"rank2.{split}.txt").read_text().splitlines()
        for metric, value in dart_webnlg_metrics(preds, refs).items():
            assert recorded[(2, split, metric)] == pytest.approx(value)


@pytest.mark.parametrize("model,task", [("tiny-gpt2", "sst2"), ("tiny-roberta", "e2e"), ("tiny-gpt2", "synthetic")])
def test_model_family_must_suit_the_task(model, task):
    with pytest.raises(ConfigError, match=f"task={task} .* needs a model of family"):
        compose_spec([f"model={model}", f"task={task}"])


def test_label_smoothing_on_a_glue_task_is_refused(glue_dir):
    with pytest.raises(ConfigError, match="label_smoothing=0.1 applies to nlg tasks only"):
        compose_spec(["model=tiny-roberta", "task=sst2", f"data.glue_dir={glue_dir}", "trainer.label_smoothing=0.1"])


def test_bad_decoding_settings_name_the_value():
    with pytest.raises(ConfigError, match="task.num_beams=0 must be a positive number"):
        compose_spec(["model=tiny-gpt2", "task=e2e", "task.num_beams=0"])
    with pytest.raises(ConfigError, match="task.webnlg_subsets=.*must list all, seen and/or unseen"):
        compose_spec(["model=tiny-gpt2", "task=webnlg", "task.webnlg_subsets=[unsen]"])
    with pytest.raises(ConfigError, match="model.max_length=8 leaves no room"):
        build_task(compose_spec(["model=tiny-gpt2", "task=e2e", "model.max_length=8", "task.max_new_tokens=8"]),
                   None, None, "cpu")


@pytest.mark.slow
def test_cli_missing_nlg_files_fail_with_one_line(tmp_path):
    result = run_cli(["model=tiny-gpt2", "task=dart", f"data.nlg_dir={tmp_path / 'none'}",
                      f"out_dir={tmp_path / 'exp'}"],
                     cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "dart-v1.1.1-full-train.json not found" in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.parametrize("task", ["e2e", "dart"])
def test_empty_training_data_is_an_error_not_a_finished_run(task, tmp_path):
    nlg_dir = write_nlg_dir(tmp_path / "nlg", task)
    train = next(p for p in nlg_dir.rglob("*") if p.is_file() and "train" in p.name)
    train.write_text("" if task == "e2e" else "[]")
    spec = compose_spec(nlg_overrides(task, nlg_dir, tmp_path / "exp"))
    with pytest.raises(DataError, match=f"task {task} has no training rows .*check its training file"):
        build_task(spec, None, load_tokenizer(spec.model), "cpu")
