"""The method itself, checked against formulas computed independently in each test.

Every test first gives A and B fresh random non-zero values: with B = 0 (its initial value)
the adapter is the identity and most checks would pass for any code.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel, RobertaConfig, RobertaForSequenceClassification

from dylora import (
    AdapterConfig,
    RankSampler,
    adapter_layers,
    add_adapters,
    export_peft,
    hold_untrained_rows,
    load_adapter,
    merge,
    merged,
    rank_pmf,
    rank_schedule,
    save_adapter,
    set_rank,
    set_truncation,
    trainable_parameters,
    unmerge,
)
from dylora.errors import ConfigError

D, LAYERS, R_MAX = 16, 2, 4


def tiny_roberta(num_labels: int = 3, seed: int = 0) -> RobertaForSequenceClassification:
    torch.manual_seed(seed)
    config = RobertaConfig(
        vocab_size=50, hidden_size=D, num_hidden_layers=LAYERS, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=40, num_labels=num_labels,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    return RobertaForSequenceClassification(config).eval()


def tiny_gpt2(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=50, n_embd=D, n_layer=LAYERS, n_head=2, n_positions=40,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(config).eval()


def randomize(model: nn.Module, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in adapter_layers(model):
            layer.lora_A.copy_(torch.randn(layer.lora_A.shape, generator=gen))
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=gen))


def inputs(seed: int = 2) -> torch.Tensor:
    return torch.randint(3, 50, (3, 7), generator=torch.Generator().manual_seed(seed))


def logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


# ---------------------------------------------------------------------------- forward


@pytest.mark.parametrize("scaling", ["rank", "r_max"])
def test_linear_forward_at_every_rank_matches_formula(scaling):
    base = nn.Linear(6, 5)
    torch.manual_seed(3)
    model = nn.Sequential()
    model.add_module("proj", copy.deepcopy(base))
    cfg = AdapterConfig(r_max=R_MAX, alpha=8.0, scaling=scaling, target_modules=["proj"], modules_to_save=[])
    add_adapters(model, cfg)
    randomize(model)
    layer = model.proj
    x = torch.randn(4, 6)
    a, b = layer.lora_A[0].detach(), layer.lora_B[0].detach()
    for rank in range(1, R_MAX + 1):
        set_rank(model, rank)
        s = 8.0 / (rank if scaling == "rank" else R_MAX)
        expected = x @ base.weight.T + base.bias + s * x @ a[:rank].T @ b[:, :rank].T
        got = model(x).detach()
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(got, base(x).detach(), atol=1e-3)


def test_gpt2_c_attn_adapts_query_and_value_blocks_only():
    model = tiny_gpt2()
    c_attn = copy.deepcopy(model.transformer.h[0].attn.c_attn)
    add_adapters(model, AdapterConfig(r_max=R_MAX, alpha=4.0))
    randomize(model)
    layer = model.transformer.h[0].attn.c_attn
    x = torch.randn(2, 3, D)
    w0 = c_attn.weight.detach()  # Conv1D stores d_in x d_out
    for rank in range(1, R_MAX + 1):
        set_rank(model, rank)
        s = 4.0 / rank
        expected = x @ w0 + c_attn.bias.detach()
        for i, lo in enumerate((0, 2 * D)):
            a, b = layer.lora_A[i, :rank].detach(), layer.lora_B[i, :, :rank].detach()
            expected[..., lo : lo + D] += s * x @ a.T @ b.T
        got = layer(x).detach()
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got[..., D : 2 * D], (x @ w0 + c_attn.bias)[..., D : 2 * D].detach())
        assert not torch.allclose(got[..., :D], (x @ w0 + c_attn.bias)[..., :D].detach(), atol=1e-3)


def test_parameter_count_and_freezing():
    model = tiny_roberta()
    add_adapters(model, AdapterConfig(r_max=R_MAX))
    counts = trainable_parameters(model)
    assert counts["adapter"] == 2 * LAYERS * R_MAX * (D + D)  # query and value, d_in = d_out = D
    head = sum(p.numel() for p in model.classifier.parameters())
    assert counts["head"] == head
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all("lora_" in n or n.startswith("classifier.") for n in trainable)
    gpt = tiny_gpt2()
    add_adapters(gpt, AdapterConfig(r_max=R_MAX))
    assert trainable_parameters(gpt) == {"adapter": 2 * LAYERS * R_MAX * (D + D), "head": 0,
                                         "total": 2 * LAYERS * R_MAX * 2 * D}


# ---------------------------------------------------------------------------- update rules


def one_step(update_rule: str, rank: int, optimizer: str = "sgd", masking: str = "gradient", steps: int = 1):
    model = tiny_roberta()
    add_adapters(model, AdapterConfig(r_max=R_MAX, update_rule=update_rule, masking=masking))
    randomize(model)
    set_rank(model, rank)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = (torch.optim.SGD(params, lr=0.1) if optimizer == "sgd"
           else torch.optim.AdamW(params, lr=0.1, weight_decay=0.1))
    layer = model.roberta.encoder.layer[0].attention.self.query
    before = layer.lora_A.detach().clone(), layer.lora_B.detach().clone()
    ids = inputs()
    for step in range(steps):
        model.train()
        set_rank(model, rank if step == 0 else 1 + (rank + step) % R_MAX)
        loss = model(input_ids=ids, labels=torch.tensor([0, 1, 2])).loss
        opt.zero_grad()
        loss.backward()
        with hold_untrained_rows(model):
            opt.step()
    set_rank(model, rank)
    changed_a = (layer.lora_A.detach() != before[0]).any(dim=-1)[0]  # per row of A
    changed_b = (layer.lora_B.detach() != before[1]).any(dim=1)[0]  # per column of B
    return changed_a.tolist(), changed_b.tolist(), layer, before


@pytest.mark.parametrize("rank", [1, 3, R_MAX])
def test_default_rule_updates_rows_up_to_b(rank):
    rows, cols, _, _ = one_step("all", rank)
    expected = [i < rank for i in range(R_MAX)]
    assert rows == expected and cols == expected


@pytest.mark.parametrize("rank", [1, 3, R_MAX])
def test_frozen_rule_updates_only_row_b(rank):
    rows, cols, _, _ = one_step("frozen", rank)
    expected = [i == rank - 1 for i in range(R_MAX)]
    assert rows == expected and cols == expected


def test_strict_frozen_keeps_other_rows_bit_identical_under_adamw():
    # Several AdamW steps with weight decay at varying ranks; the last one is checked at rank 3:
    # with update masking every row except the one trained at each step stays exactly still.
    model = tiny_roberta()
    add_adapters(model, AdapterConfig(r_max=R_MAX, update_rule="frozen", masking="update"))
    randomize(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=0.05, weight_decay=0.1)
    layer = model.roberta.encoder.layer[1].attention.self.value
    ids, labels = inputs(), torch.tensor([0, 1, 2])
    for rank in [2, 4, 2, 1, 3, 3]:
        model.train()
        set_rank(model, rank)
        a0, b0 = layer.lora_A.detach().clone(), layer.lora_B.detach().clone()
        opt.zero_grad()
        model(input_ids=ids, labels=labels).loss.backward()
        with hold_untrained_rows(model):
            opt.step()
        for i in range(R_MAX):
            same_a = torch.equal(layer.lora_A[:, i], a0[:, i])
            same_b = torch.equal(layer.lora_B[:, :, i], b0[:, :, i])
            assert (same_a and same_b) == (i != rank - 1), (rank, i)


def test_gradient_masking_lets_adamw_move_frozen_rows_as_the_official_code_does():
    rows, _, _, _ = one_step("frozen", 3, optimizer="adamw", masking="gradient", steps=3)
    assert rows[0] and rows[1]  # momentum and weight decay moved rows below b


def test_lora_trains_every_row_at_r_max():
    model = tiny_roberta()
    cfg = AdapterConfig(method="lora", r_max=R_MAX, update_rule="frozen", masking="update")
    add_adapters(model, cfg)
    assert {rank_schedule(cfg, seed=5)(step) for step in range(50)} == {R_MAX}


# ---------------------------------------------------------------------------- sampling


def test_sampled_ranks_stay_in_range_and_are_reproducible():
    sampler = RankSampler(2, 6, seed=7)
    draws = [sampler(step) for step in range(500)]
    assert set(draws) == set(range(2, 7))
    assert draws == [RankSampler(2, 6, seed=7)(step) for step in range(500)]
    assert draws != [RankSampler(2, 6, seed=8)(step) for step in range(500)]
    assert sampler(123) == sampler(123)


@pytest.mark.parametrize("distribution,p", [("uniform", 0.15), ("geometric", 0.15), ("geometric", 0.5)])
def test_empirical_distribution_matches_pmf(distribution, p):
    r_min, r_max, n = 2, 8, 20000
    ranks = np.arange(r_min, r_max + 1)
    if distribution == "uniform":
        expected = np.full(len(ranks), 1 / len(ranks))
    else:
        w = np.array([p * (1 - p) ** (b - r_min) for b in ranks])
        expected = w / w.sum()
    np.testing.assert_allclose(rank_pmf(r_min, r_max, distribution, p), expected, rtol=1e-12)
    sampler = RankSampler(r_min, r_max, distribution, p, seed=11)
    counts = np.bincount([sampler(step) for step in range(n)], minlength=r_max + 1)[r_min:]
    result = stats.chisquare(counts, expected * n)
    assert result.pvalue > 1e-3, (counts, expected * n)
    # and a wrong pmf is rejected, so the test can fail
    wrong = expected * np.linspace(0.8, 1.2, len(ranks))  # a 20% tilt
    wrong /= wrong.sum()
    assert stats.chisquare(counts, wrong * n).pvalue < 1e-6


# ---------------------------------------------------------------------------- merge


def assert_merge_round_trip(model, expected_delta):
    """At every rank: merged weights equal base + expected_delta(layer, rank), the merged model gives
    the unmerged logits, and unmerging restores the base weights exactly."""
    ids = inputs()
    before = {n: layer.base.weight.detach().clone() for n, layer in adapter_layers(model)}
    for rank in range(1, R_MAX + 1):
        set_rank(model, rank)
        expected = logits(model, ids)
        with merged(model, rank):
            for n, layer in adapter_layers(model):
                torch.testing.assert_close(layer.base.weight, before[n] + expected_delta(layer, rank))
            torch.testing.assert_close(logits(model, ids), expected, rtol=1e-4, atol=1e-5)
        for n, layer in adapter_layers(model):
            assert torch.equal(layer.base.weight, before[n])  # restored bit for bit


def test_merge_then_unmerge_restores_base_and_outputs_agree():
    model = tiny_roberta()
    add_adapters(model, AdapterConfig(r_max=R_MAX, alpha=16))
    randomize(model)

    def by_hand(layer, rank):  # alpha/b * B[:, :b] @ A[:b], computed here
        return (16 / rank) * layer.lora_B[0, :, :rank].detach() @ layer.lora_A[0, :rank].detach()

    assert_merge_round_trip(model, by_hand)


def test_changing_rank_while_merged_unmerges_at_the_merged_rank():
    model = tiny_gpt2()
    add_adapters(model, AdapterConfig(r_max=R_MAX))
    randomize(model)
    ids = inputs()
    expected = {}
    for rank in (1, 4):
        set_rank(model, rank)
        expected[rank] = logits(model, ids)
    merge(model, 4)
    set_rank(model, 1)  # must unmerge the rank-4 update and merge the rank-1 one
    torch.testing.assert_close(logits(model, ids), expected[1], rtol=1e-4, atol=1e-5)
    unmerge(model)
    set_rank(model, 4)
    torch.testing.assert_close(logits(model, ids), expected[4], rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------- saving


def test_dynamic_adapter_round_trip_through_safetensors(tmp_path):
    model = tiny_roberta()
    add_adapters(model, AdapterConfig(r_max=R_MAX, update_rule="frozen"))
    randomize(model)
    with torch.no_grad():
        model.classifier.out_proj.weight.add_(1.0)
    save_adapter(model, tmp_path / "adapter.safetensors")
    fresh = load_adapter(tiny_roberta(), tmp_path / "adapter.safetensors")
    ids = inputs()
    for rank in range(1, R_MAX + 1):
        set_rank(model, rank)
        set_rank(fresh, rank)
        torch.testing.assert_close(logits(fresh, ids), logits(model, ids))


@pytest.mark.parametrize("scaling", ["rank", "r_max"])
def test_peft_export_reproduces_roberta_with_head_at_every_rank(tmp_path, scaling):
    from peft import PeftModel

    model = tiny_roberta()
    add_adapters(model, AdapterConfig(r_max=R_MAX, alpha=16, scaling=scaling))
    randomize(model)
    with torch.no_grad():
        model.classifier.dense.weight.mul_(3.0)  # the trained head must travel too
    ids = inputs()
    for rank in range(1, R_MAX + 1):
        set_rank(model, rank)
        out = export_peft(model, rank, tmp_path / f"r{rank}")
        assert {p.name for p in out.iterdir()} >= {"adapter_config.json", "adapter_model.safetensors"}
        peft_model = PeftModel.from_pretrained(tiny_roberta(), str(out)).eval()
        got = logits(peft_model, ids)
        torch.testing.assert_close(got, logits(model, ids), rtol=1e-4, atol=1e-5)
        assert not torch.allclose(got, logits(tiny_roberta(), ids), atol=1e-3)


def test_peft_export_reproduces_gpt2_q_v_adapter_at_every_rank(tmp_path):
    import json

    from peft import PeftModel

    model = tiny_gpt2()
    add_adapters(model, AdapterConfig(r_max=R_MAX, alpha=32))
    randomize(model)
    ids = inputs()
    for rank in range(1, R_MAX + 1):
        set_rank(model, rank)
        out = export_peft(model, rank, tmp_path / f"r{rank}")
        saved = json.loads((out / "adapter_config.json").read_text())
        assert saved["r"] == 2 * rank and saved["lora_alpha"] == 2 * 32  # rank-2b block adapter
        peft_model = PeftModel.from_pretrained(tiny_gpt2(), str(out)).eval()
        torch.testing.assert_close(logits(peft_model, ids), logits(model, ids), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------- SVD truncation


def svd_update(layer, rank: int) -> torch.Tensor:
    """The best rank-b approximation of each slice's s(r_max) B A, by numpy's SVD of the full d_out x d_in
    matrix (no QR, no factors of ours), laid out as delta_weight."""
    scale = layer.config.scale(layer.config.r_max)
    d_out = layer.base.weight.shape[1] if layer.fan_in_fan_out else layer.base.weight.shape[0]
    delta = np.zeros((d_out, layer.lora_A.shape[-1]))
    for s, (lo, hi) in enumerate(layer.out_slices):
        full = scale * layer.lora_B[s].detach().double().numpy() @ layer.lora_A[s].detach().double().numpy()
        u, sv, vh = np.linalg.svd(full)
        delta[lo:hi] = (u[:, :rank] * sv[:rank]) @ vh[:rank]
    delta = torch.from_numpy(delta).float()
    return delta.T if layer.fan_in_fan_out else delta


@pytest.mark.parametrize("make", [tiny_roberta, tiny_gpt2], ids=["roberta", "gpt2-q-v-blocks"])
def test_svd_truncation_merges_the_best_rank_b_approximation_of_each_update(make):
    model = make()
    add_adapters(model, AdapterConfig(r_max=R_MAX, alpha=16))
    randomize(model)
    ids = inputs()
    before = {n: layer.base.weight.detach().clone() for n, layer in adapter_layers(model)}
    for rank in range(1, R_MAX + 1):
        with merged(model, rank, "svd"):
            for n, layer in adapter_layers(model):
                torch.testing.assert_close(layer.base.weight, before[n] + svd_update(layer, rank), rtol=1e-4, atol=1e-5)
            svd_logits = logits(model, ids)
        set_rank(model, rank)
        set_truncation(model, "svd")  # unmerged, the forward pass takes the same factors
        torch.testing.assert_close(logits(model, ids), svd_logits, rtol=1e-4, atol=1e-5)
        set_truncation(model, "prefix")
        if rank < R_MAX:  # random A, B: the prefix is not the best approximation below r_max
            assert not torch.allclose(logits(model, ids), svd_logits, atol=1e-4)
    for n, layer in adapter_layers(model):
        assert torch.equal(layer.base.weight, before[n]) and layer.truncation == "prefix"


def test_at_r_max_svd_and_prefix_truncation_give_the_same_outputs():
    model = tiny_roberta()
    add_adapters(model, AdapterConfig(r_max=R_MAX, alpha=16, scaling="r_max"))
    randomize(model)
    ids = inputs()
    with merged(model, R_MAX):
        prefix = logits(model, ids)
    with merged(model, R_MAX, "svd"):
        torch.testing.assert_close(logits(model, ids), prefix, rtol=1e-4, atol=1e-5)
    with pytest.raises(ConfigError, match="truncation 'top' is not one of prefix, svd"):
        set_truncation(model, "top")


@pytest.mark.parametrize("make", [tiny_roberta, tiny_gpt2], ids=["roberta", "gpt2-q-v-blocks"])
def test_peft_export_of_the_svd_truncation_reproduces_its_outputs(tmp_path, make):
    from peft import PeftModel

    model = make()
    add_adapters(model, AdapterConfig(r_max=R_MAX, alpha=16))
    randomize(model)
    ids = inputs()
    for rank in (1, 3):
        out = export_peft(model, rank, tmp_path / f"svd{rank}", truncation="svd")
        with merged(model, rank, "svd"):
            expected = logits(model, ids)
        peft_model = PeftModel.from_pretrained(make(), str(out)).eval()
        torch.testing.assert_close(logits(peft_model, ids), expected, rtol=1e-4, atol=1e-5)
    assert all(layer.truncation == "prefix" for _, layer in adapter_layers(model))  # the export put it back


# ---------------------------------------------------------------------------- per-module ranks


def hand_merged_roberta(model, ranks: dict[str, int], alpha: float = 16) -> nn.Module:
    """A fresh tiny RoBERTa (same base and head) with each module's update alpha/b B[:, :b] A[:b], at its own
    b, added to its weight by hand."""
    fresh = tiny_roberta()
    layers = dict(adapter_layers(model))
    with torch.no_grad():
        for name, b in ranks.items():
            a, bb = layers[name].lora_A[0, :b], layers[name].lora_B[0, :, :b]
            fresh.get_submodule(name).weight.add_(alpha / b * bb @ a)
        fresh.classifier.load_state_dict(model.classifier.state_dict())
    return fresh


def allocation(model, seed: int = 3) -> dict[str, int]:
    gen = torch.Generator().manual_seed(seed)
    return {name: int(torch.randint(1, R_MAX + 1, (), generator=gen)) for name, _ in adapter_layers(model)}


def test_a_rank_per_module_truncates_each_module_at_its_own_rank_unmerged_and_merged():
    model = tiny_roberta()
    add_adapters(model, AdapterConfig(r_max=R_MAX, alpha=16))
    randomize(model)
    ranks = allocation(model)
    assert len(set(ranks.values())) > 1, ranks
    ids = inputs()
    expected = logits(hand_merged_roberta(model, ranks), ids)
    set_rank(model, ranks)
    assert {n: layer.rank for n, layer in adapter_layers(model)} == ranks
    torch.testing.assert_close(logits(model, ids), expected, rtol=1e-4, atol=1e-5)
    set_rank(model, R_MAX)
    with merged(model, ranks):
        torch.testing.assert_close(logits(model, ids), expected, rtol=1e-4, atol=1e-5)
    name = next(iter(ranks))
    with pytest.raises(ConfigError, match=r"must name every adapted module and no other: unknown \['nope'\]"):
        set_rank(model, {**ranks, "nope": 1})
    with pytest.raises(ConfigError, match=rf"missing \['{name}'\]"):
        set_rank(model, {n: b for n, b in ranks.items() if n != name})
    with pytest.raises(ConfigError, match="rank 9 is outside 1..r_max=4"):
        set_rank(model, {**ranks, name: 9})


@pytest.mark.parametrize("make", [tiny_roberta, tiny_gpt2], ids=["roberta", "gpt2-q-v-blocks"])
@pytest.mark.parametrize("truncation,scaling", [("prefix", "r_max"), ("svd", "rank")])
def test_peft_export_at_a_rank_per_module_keeps_each_modules_rank_and_scale(tmp_path, make, truncation, scaling):
    import json

    from peft import PeftModel

    model = make()
    # scaling r_max: s(b) = alpha / r_max, so PEFT's lora_alpha / r differs by module: alpha_pattern must carry it
    add_adapters(model, AdapterConfig(r_max=R_MAX, alpha=16, scaling=scaling))
    randomize(model)
    ranks = allocation(model, seed=5)
    ids = inputs()
    with merged(model, ranks, truncation):
        expected = logits(model, ids)
    out = export_peft(model, ranks, tmp_path / "allocated", truncation=truncation)
    saved = json.loads((out / "adapter_config.json").read_text())
    assert saved["rank_pattern"] and saved["alpha_pattern"]  # the allocation has more than one rank
    peft_model = PeftModel.from_pretrained(make(), str(out)).eval()
    torch.testing.assert_close(logits(peft_model, ids), expected, rtol=1e-4, atol=1e-5)
    shapes = {n: m.lora_A["default"].weight.shape[0] for n, m in peft_model.base_model.model.named_modules()
              if hasattr(m, "lora_A") and "default" in m.lora_A}
    slices = 2 if make is tiny_gpt2 else 1
    assert shapes == {n: slices * b for n, b in ranks.items()}


def test_per_module_sampling_draws_each_modules_rank_independently_from_p_b():
    config = AdapterConfig(r_max=R_MAX, sampling="per_module", distribution="geometric", geometric_p=0.3)
    modules = [f"m{i}" for i in range(6)]
    schedule = rank_schedule(config, seed=7, modules=modules)
    draws = [schedule(step) for step in range(3000)]
    assert draws[:5] == [rank_schedule(config, seed=7, modules=modules)(s) for s in range(5)]  # reproducible
    assert all(list(d) == modules for d in draws)
    pmf = rank_pmf(1, R_MAX, "geometric", 0.3)
    for name in modules[:2]:
        counts = np.bincount([d[name] for d in draws], minlength=R_MAX + 1)[1:]
        assert stats.chisquare(counts, pmf * len(draws)).pvalue > 1e-3
    same = np.mean([d["m0"] == d["m1"] for d in draws])
    assert same == pytest.approx(float(np.sum(pmf**2)), abs=0.03)  # independent draws agree by chance only
    with pytest.raises(ConfigError, match="sampling=per_module draws a rank per module each step: it needs"):
        AdapterConfig(method="lora", sampling="per_module")
    with pytest.raises(ConfigError, match="sampling='layer' is not one of global, per_module"):
        AdapterConfig(sampling="layer")


def test_update_masking_holds_each_modules_rows_at_its_own_drawn_rank():
    model = tiny_roberta()
    add_adapters(model, AdapterConfig(r_max=R_MAX, update_rule="frozen", masking="update", sampling="per_module"))
    randomize(model)
    ranks = allocation(model, seed=11)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.05, weight_decay=0.1)
    before = {n: layer.lora_A.detach().clone() for n, layer in adapter_layers(model)}
    set_rank(model, ranks)
    model(input_ids=inputs(), labels=torch.tensor([0, 1, 2])).loss.backward()
    with hold_untrained_rows(model, [ranks]):
        opt.step()
    for name, layer in adapter_layers(model):
        moved = (layer.lora_A.detach() != before[name]).any(dim=-1)[0].tolist()
        assert moved == [i == ranks[name] - 1 for i in range(R_MAX)], name


# ---------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "kwargs,fragment",
    [
        ({"r_min": 5, "r_max": 4}, "r_min=5 is larger than r_max=4"),
        ({"r_max": 0}, "r_max=0"),
        ({"method": "dora"}, "method='dora'"),
        ({"scaling": "sqrt"}, "scaling='sqrt'"),
        ({"update_rule": "nested"}, "update_rule='nested'"),
        ({"masking": "none"}, "masking='none'"),
        ({"alpha": 0}, "alpha=0"),
        ({"geometric_p": 1.5}, "geometric_p=1.5"),
        ({"target_modules": []}, "target_modules=[]"),
    ],
)
def test_bad_config_values_are_named(kwargs, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        AdapterConfig(**kwargs)


def test_bad_ranks_and_modules_are_named():
    model = tiny_roberta()
    with pytest.raises(ConfigError, match=r"\['keys'\] match no nn.Linear"):
        add_adapters(model, AdapterConfig(target_modules=["keys"]))
    with pytest.raises(ConfigError, match=r"target module\(s\) \['nothing'\]"):
        add_adapters(model, AdapterConfig(target_modules=["query", "nothing"]))
    add_adapters(model, AdapterConfig(r_max=R_MAX))
    for bad in (0, R_MAX + 1):
        with pytest.raises(ConfigError, match=f"rank {bad} is outside 1..r_max={R_MAX}"):
            set_rank(model, bad)
    with pytest.raises(ConfigError, match="already has adapters"):
        add_adapters(model, AdapterConfig(r_max=R_MAX))


@pytest.mark.parametrize("targets", [["c_proj"], ["c_attn"]])
def test_gpt2_conv1d_merge_matches_the_unmerged_forward_and_unmerges(targets):
    # c_proj adapts every output of a Conv1D (the fused in-place path), c_attn its q/v slices.
    model = tiny_gpt2()
    add_adapters(model, AdapterConfig(r_max=R_MAX, target_modules=targets))
    randomize(model)
    assert_merge_round_trip(model, lambda layer, rank: layer.delta_weight(rank))
