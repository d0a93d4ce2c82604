"""dylora.dropout: the fast dropout keeps each element independently with probability 1 - p and scales it
by 1 / (1 - p); its attention equals softmax(q k^T s + mask) with that dropout, @ v; a model switched to it
computes what it computed before wherever no dropout is drawn."""

import math

import pytest
import torch
from torch import nn

from dylora import dropout as fast
from dylora.lab.bench import TINY
from dylora.models import load_model, load_tokenizer
from dylora.spec import ModelSpec


def _binomial_ok(kept: int, n: int, q: float, z: float = 5.0) -> bool:
    return abs(kept - n * q) <= z * math.sqrt(n * q * (1 - q))


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keeps_each_element_with_probability_one_minus_p_and_scales_it(p):
    torch.manual_seed(0)
    x = torch.rand(400, 1000) + 0.5  # non-zero, so a zero output means dropped
    y = fast.dropout(x, p)
    kept = y != 0
    assert _binomial_ok(int(kept.sum()), x.numel(), 1 - p)
    torch.testing.assert_close(y[kept], x[kept] / (1 - fast.effective_p(p)), rtol=1e-6, atol=0)
    # independent positions: a kept element's neighbour is kept at the same rate as any element
    pairs = kept[:, 1:] & kept[:, :-1]
    assert _binomial_ok(int(pairs.sum()), pairs.numel(), (1 - p) ** 2, z=6)
    # the mean is preserved, within its sampling error
    expected_sd = math.sqrt(float((x**2).mean()) * p / (1 - p) / x.numel())  # sd of the mean of y - x
    assert abs(float(y.mean()) - float(x.mean())) < 6 * expected_sd


def test_p_is_applied_to_16_bits_and_masks_differ_between_calls():
    assert fast.effective_p(0.1) == 6554 / 2**16
    assert abs(fast.effective_p(0.1) - 0.1) <= 2**-17
    # the share kept is 1 - p' exactly over every 16-bit word
    words = torch.arange(-(2**15), 2**15, dtype=torch.int32)
    assert int((words >= fast.keep_threshold(0.1)).sum()) == 2**16 - 6554
    torch.manual_seed(1)
    a, b = fast.keep_mask((1000,), 0.5), fast.keep_mask((1000,), 0.5)
    assert not torch.equal(a, b)
    torch.manual_seed(1)
    assert torch.equal(fast.keep_mask((1000,), 0.5), a)  # the torch generator drives it: seeds reproduce


def test_no_dropout_when_evaluating_or_p_zero_and_all_dropped_at_one():
    x = torch.randn(5, 7)
    assert fast.dropout(x, 0.3, training=False) is x
    assert fast.dropout(x, 0.0) is x
    assert torch.equal(fast.dropout(x, 1.0), torch.zeros_like(x))
    module = fast.FastDropout(0.3).eval()
    assert module(x) is x


def _encoder_attention() -> nn.Module:
    module = nn.Module()
    module.is_causal = False
    return module


@pytest.mark.parametrize("mask_kind", ["bool", "additive", "none"])
def test_attention_equals_softmax_dropout_matmul(mask_kind):
    torch.manual_seed(2)
    q, k, v = (torch.randn(2, 3, 5, 4) for _ in range(3))
    keys = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)[:, None, None, :].expand(2, 1, 5, 5)
    mask = {"bool": keys, "additive": torch.where(keys, 0.0, -1e9), "none": None}[mask_kind]
    p, scale = 0.3, 0.37
    torch.manual_seed(3)
    out, _ = fast.attention(_encoder_attention(), q, k, v, mask, dropout=p, scaling=scale)
    torch.manual_seed(3)
    keep = fast.keep_mask((2, 3, 5, 5), p)
    scores = q @ k.transpose(-1, -2) * scale
    if mask is not None:
        scores = scores.masked_fill(~keys, -float("inf"))
    probs = torch.softmax(scores, -1) * keep / (1 - fast.effective_p(p))
    torch.testing.assert_close(out, (probs @ v).transpose(1, 2))
    # without dropout it is SDPA itself
    plain, _ = fast.attention(_encoder_attention(), q, k, v, mask, dropout=0.0, scaling=scale)
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    torch.testing.assert_close(plain, expected.transpose(1, 2))


def test_causal_attention_without_a_mask_stays_with_sdpa():
    torch.manual_seed(6)
    q, k, v = (torch.randn(1, 2, 6, 4) for _ in range(3))
    causal = nn.Module()
    causal.is_causal = True
    torch.manual_seed(7)
    out, _ = fast.attention(causal, q, k, v, None, dropout=0.2)
    torch.manual_seed(7)
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=0.2, is_causal=True)
    torch.testing.assert_close(out, expected.transpose(1, 2))


def _tiny(num_labels=2):
    spec = ModelSpec(name="tiny", source="tiny", max_length=32, tiny=TINY)
    return load_model(spec, load_tokenizer(spec), num_labels=num_labels)


def test_a_model_switched_to_it_is_unchanged_without_dropout_and_drops_while_training():
    torch.manual_seed(4)
    model = _tiny()
    batch = {"input_ids": torch.randint(5, 100, (3, 9)), "attention_mask": torch.ones(3, 9, dtype=torch.long)}
    batch["attention_mask"][2, 6:] = 0
    model.eval()
    before = model(**batch).logits
    dropouts = sum(type(m) is nn.Dropout for m in model.modules())
    assert fast.use_fast_dropout(model) == dropouts > 0
    assert not any(type(m) is nn.Dropout for m in model.modules())
    assert model.config._attn_implementation == fast.ATTENTION
    torch.testing.assert_close(model(**batch).logits, before)  # evaluation: no dropout, SDPA
    model.train()
    torch.manual_seed(5)
    a = model(**batch).logits
    torch.manual_seed(5)
    assert torch.equal(model(**batch).logits, a)  # seeded: reproducible
    assert not torch.allclose(model(**batch).logits, a)  # and drawn anew at each step
