"""The training loop's pieces, each against an independent computation."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook
from transformers import DataCollatorWithPadding, get_linear_schedule_with_warmup

from dylora import AdapterConfig, adapter_layers, add_adapters, rank_schedule, set_rank, summed_ranks
from dylora.errors import ConfigError
from dylora.models import load_model, load_tokenizer
from dylora.spec import ModelSpec, TrainerSpec
from dylora.sweep import predict
from dylora.tasks.base import TaskData
from dylora.train import Callbacks, Placement, lr_factor, step_indices, total_steps, train


@pytest.mark.parametrize("total,warmup", [(100, 6), (10, 0), (7, 7)])
def test_lr_schedule_equals_transformers_linear_warmup(total, warmup):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = get_linear_schedule_with_warmup(opt, warmup, total)
    for step in range(total):
        assert lr_factor(step, total, warmup) == pytest.approx(opt.param_groups[0]["lr"], abs=1e-12)
        opt.step()
        sched.step()


def test_each_epoch_visits_every_example_once_in_a_seeded_order():
    trainer = TrainerSpec(batch_size=4, grad_accum=2, epochs=2)
    n = 21
    per_epoch, total = total_steps(n, trainer)
    assert (per_epoch, total) == (3, 6)  # ceil(21 / 8)
    for epoch in range(2):
        seen = [i for s in range(epoch * per_epoch, (epoch + 1) * per_epoch)
                for b in step_indices(n, s, per_epoch, trainer, 5) for i in b]
        assert sorted(seen) == list(range(n))
    first = [step_indices(n, s, per_epoch, trainer, 5) for s in range(per_epoch)]
    assert first == [step_indices(n, s, per_epoch, trainer, 5) for s in range(per_epoch)]
    assert first != [step_indices(n, s, per_epoch, trainer, 6) for s in range(per_epoch)]
    assert step_indices(n, 0, per_epoch, trainer, 5) != step_indices(n, per_epoch, per_epoch, trainer, 5)  # reshuffled


def test_group_by_length_keeps_each_epoch_whole_and_cuts_padding():
    trainer = TrainerSpec(batch_size=4, grad_accum=2, epochs=2, group_by_length=True)
    gen = torch.Generator().manual_seed(0)
    n = 400
    lengths = torch.randint(5, 120, (n,), generator=gen).tolist()
    per_epoch, _ = total_steps(n, trainer)

    def epoch_batches(epoch, lengths):
        return [b for s in range(epoch * per_epoch, (epoch + 1) * per_epoch)
                for b in step_indices(n, s, per_epoch, trainer, 5, lengths)]

    grouped, plain = epoch_batches(0, lengths), epoch_batches(0, None)
    assert sorted(i for b in grouped for i in b) == list(range(n))  # every example once
    assert [len(b) for b in grouped] == [len(b) for b in plain]
    assert epoch_batches(0, lengths) == grouped and epoch_batches(1, lengths) != grouped  # seeded, reshuffled

    def padded_tokens(batches):  # what a pad-to-longest collator feeds the model
        return sum(len(b) * max(lengths[i] for i in b) for b in batches)

    assert padded_tokens(grouped) < 0.75 * padded_tokens(plain)  # 0.67 here: ~mean length vs ~max of 4
    assert max(lengths[i] for i in grouped[0]) == max(lengths)  # HF puts the longest batch first


CPU = Placement(torch.device("cpu"))
QUIET = Callbacks(progress=False)


def training_data(rows: list[dict], collate) -> TaskData:
    return TaskData(rows, collate, evaluate=lambda model, rank: {})


def tiny_setup(method: str = "dylora", **adapter):
    spec = ModelSpec(name="tiny-roberta", source="tiny", max_length=32,
                     tiny={"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
                           "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0})
    tokenizer = load_tokenizer(spec)
    model = load_model(spec, tokenizer, 2)
    torch.manual_seed(0)
    add_adapters(model, AdapterConfig(method=method, r_max=4, alpha=8, **adapter))
    gen = torch.Generator().manual_seed(0)
    rows = [{"input_ids": [101, *torch.randint(1000, 2000, (6,), generator=gen).tolist(), 102], "labels": i % 2}
            for i in range(16)]
    return model, DataCollatorWithPadding(tokenizer), rows


def test_one_rank_per_step_for_every_micro_batch():
    model, collate, rows = tiny_setup()
    seen: list[int] = []
    layer = next(layer for _, layer in adapter_layers(model))
    layer.register_forward_pre_hook(lambda m, args: seen.append(m.rank))
    trainer = TrainerSpec(batch_size=2, grad_accum=3, max_steps=5, warmup_ratio=0.0)
    schedule = rank_schedule(layer.config, seed=3)
    result = train(model, training_data(rows, collate), trainer, schedule, 3, CPU, callbacks=QUIET)
    assert result.ranks == [schedule(s) for s in range(5)]
    per_epoch, _ = total_steps(len(rows), trainer)
    micro = [len(step_indices(len(rows), s, per_epoch, trainer, 3)) for s in range(5)]
    assert micro[:2] == [3, 3] and micro[2] == 2  # 16 rows: an epoch's last step is short
    assert seen == [r for r, m in zip(result.ranks, micro) for _ in range(m)]  # the step's rank on every micro-batch


def test_gradient_accumulation_equals_one_larger_batch():
    model, collate, rows = tiny_setup(method="lora")
    other = copy.deepcopy(model)
    data, kwargs = training_data(rows, collate), dict(schedule=lambda step: 4, seed=1, where=CPU, callbacks=QUIET)
    train(model, data, trainer=TrainerSpec(batch_size=4, grad_accum=2, max_steps=2, warmup_ratio=0.0), **kwargs)
    train(other, data, trainer=TrainerSpec(batch_size=8, grad_accum=1, max_steps=2, warmup_ratio=0.0), **kwargs)
    for (_, a), (_, b) in zip(adapter_layers(model), adapter_layers(other)):
        torch.testing.assert_close(a.lora_A, b.lora_A, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(a.lora_B, b.lora_B, rtol=1e-5, atol=1e-6)
        assert a.lora_B.abs().sum() > 0  # it did train


@pytest.mark.parametrize(("update_rule", "distribution", "r_min"), [("all", "uniform", 1), ("frozen", "geometric", 2)])
def test_the_summed_loss_and_its_gradient_are_the_p_b_weighted_sums_over_ranks(update_rule, distribution, r_min):
    model, collate, rows = tiny_setup(update_rule=update_rule, distribution=distribution, r_min=r_min, loss="sum")
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():  # random non-zero A and B: with B = 0 the ranks would not differ
        for _, layer in adapter_layers(model):
            layer.lora_A.copy_(torch.randn(layer.lora_A.shape, generator=gen))
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=gen) * 0.3)
    reference = copy.deepcopy(model)
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    grads: dict[str, torch.Tensor] = {}

    def capture(optimizer, args, kwargs):  # the step's accumulated gradient, as the optimizer sees it
        grads.update({n: p.grad.clone() for n, p in trained})

    trainer = TrainerSpec(batch_size=4, grad_accum=2, max_steps=1, warmup_ratio=0.0, max_grad_norm=None)
    summed = summed_ranks(next(layer for _, layer in adapter_layers(model)).config)
    handle = register_optimizer_step_pre_hook(capture)
    try:
        result = train(model, training_data(rows, collate), trainer, lambda step: 1, 7, CPU, callbacks=QUIET,
                       summed=summed)
    finally:
        handle.remove()
    # independently: p_B from its formula, one batch of the step's 8 rows, autograd per rank
    ranks = range(r_min, 5)
    weights = {b: 1.0 for b in ranks} if distribution == "uniform" else {b: 0.15 * 0.85 ** (b - r_min) for b in ranks}
    p_b = {b: w / sum(weights.values()) for b, w in weights.items()}
    assert [b for b, _ in summed] == list(ranks) and [w for _, w in summed] == pytest.approx(list(p_b.values()))
    per_epoch, _ = total_steps(len(rows), trainer)
    batch = collate([rows[i] for b in step_indices(len(rows), 0, per_epoch, trainer, 7) for i in b])
    params = [p for n, p in reference.named_parameters() if p.requires_grad]
    expected_loss, expected = 0.0, [torch.zeros_like(p) for p in params]
    for b in ranks:
        set_rank(reference, b)
        loss = reference(**batch).loss
        expected_loss += p_b[b] * loss.item()
        for total, g in zip(expected, torch.autograd.grad(loss, params, allow_unused=True)):
            total += p_b[b] * (torch.zeros_like(total) if g is None else g)
    assert result.losses == [pytest.approx(expected_loss, rel=1e-5)]
    for (name, _), want in zip(trained, expected):
        torch.testing.assert_close(grads[name], want, rtol=1e-4, atol=1e-6, msg=name)
    assert all(grads[n].abs().sum() > 0 for n, _ in trained if "lora_" in n)


@pytest.mark.parametrize(("update_rule", "r_min", "learning"), [("all", 2, [0, 1, 2, 3]), ("frozen", 2, [1, 2, 3])])
def test_the_summed_loss_with_exact_masking_moves_every_row_some_rank_trains_and_no_other(update_rule, r_min, learning):
    # rows 1..b learn at rank b (all) or row b only (frozen): summed over b in r_min..4, the union of those
    model, collate, rows = tiny_setup(update_rule=update_rule, r_min=r_min, masking="update", loss="sum")
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for _, layer in adapter_layers(model):
            layer.lora_A.copy_(torch.randn(layer.lora_A.shape, generator=gen))
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=gen))
    before = {n: layer.lora_A.detach().clone() for n, layer in adapter_layers(model)}
    summed = summed_ranks(next(layer for _, layer in adapter_layers(model)).config)
    trainer = TrainerSpec(batch_size=4, max_steps=2, warmup_ratio=0.0, weight_decay=0.1)
    train(model, training_data(rows, collate), trainer, lambda step: 1, 0, CPU, callbacks=QUIET, summed=summed)
    for name, layer in adapter_layers(model):
        moved = [i for i in range(4) if not torch.equal(layer.lora_A[:, i], before[name][:, i])]
        assert moved == learning, name


def test_the_summed_loss_is_dylora_only():
    with pytest.raises(ConfigError, match="loss=sum sums DyLoRA's loss over the ranks; LoRA trains at r_max only"):
        AdapterConfig(method="lora", loss="sum")


def test_predict_batches_rows_by_length_and_returns_them_in_dataset_order():
    model, collate, _ = tiny_setup()
    gen = torch.Generator().manual_seed(1)
    lengths = torch.randint(2, 30, (23,), generator=gen).tolist()
    rows = [{"input_ids": [101, *torch.randint(1000, 2000, (n,), generator=gen).tolist(), 102], "labels": i % 2}
            for i, n in enumerate(lengths)]
    padded = []

    def recording_collate(batch):
        out = collate(batch)
        padded.append(out["input_ids"].numel())
        return out

    logits, labels = predict(model, rows, recording_collate, 5, "cpu")
    one_by_one = torch.cat([predict(model, [row], collate, 1, "cpu")[0] for row in rows])
    torch.testing.assert_close(logits, one_by_one, rtol=1e-4, atol=1e-5)  # padding masked, order restored
    assert labels.tolist() == [row["labels"] for row in rows]
    sizes = sorted(len(row["input_ids"]) for row in rows)
    assert sum(padded) == sum(len(sizes[s:s + 5]) * max(sizes[s:s + 5]) for s in range(0, len(sizes), 5))
