"""The demo's synthetic task: the teacher's hidden update has exactly the designed spectrum."""

from __future__ import annotations

import torch

from dylora import adapter_layers
from dylora.cli.compose import compose_spec
from dylora.models import load_model, load_tokenizer
from dylora.tasks.synthetic import make_synthetic, make_teacher


def demo_base():
    spec = compose_spec(["experiment=demo"])
    tokenizer = load_tokenizer(spec.model)
    return spec, tokenizer, load_model(spec.model, tokenizer, spec.task.options.num_labels).eval()


def test_teacher_update_has_the_designed_singular_values():
    _, _, base = demo_base()
    rank, strength = 4, 1.5
    teacher = make_teacher(base, None, rank, strength)
    layers = list(adapter_layers(teacher))
    assert [n for n, _ in layers] == ["roberta.encoder.layer.0.attention.self.query",
                                      "roberta.encoder.layer.0.attention.self.value"]
    for _, layer in layers:
        w0 = layer.base.weight.detach()
        delta = layer.delta_weight(rank).detach()  # scale alpha/rank = 1
        expected = strength * torch.linalg.matrix_norm(w0, ord=2) * torch.tensor([2.0 ** (-i / 2) for i in range(rank)])
        singular = torch.linalg.svdvals(delta)
        torch.testing.assert_close(singular[:rank], expected, rtol=1e-4, atol=1e-6)
        assert singular[rank:].max() < 1e-5 * expected[0]  # exactly rank ``rank``


def test_labels_are_balanced_confident_and_not_given_by_the_base():
    spec, tokenizer, base = demo_base()
    t = spec.task.options
    splits = make_synthetic(base, tokenizer, None, teacher_rank=t.teacher_rank, teacher_strength=t.teacher_strength,
                            seq_len=t.seq_len, n_train=400, n_eval=200, keep=0.5)
    assert (len(splits["train"]), len(splits["validation"])) == (400, 200)
    labels = torch.tensor(list(splits["train"]["labels"]) + list(splits["validation"]["labels"]))
    assert 0.35 < labels.float().mean() < 0.65
    ids = torch.tensor(list(splits["validation"]["input_ids"]))
    assert ids.shape == (200, t.seq_len) and (ids[:, 0] == tokenizer.cls_token_id).all()
    with torch.no_grad():
        base_logits = base(input_ids=ids).logits
    centred = (base_logits - base_logits.median(dim=0).values).argmax(-1)
    agreement = (centred == torch.tensor(list(splits["validation"]["labels"]))).float().mean()
    assert agreement < 0.8  # the frozen base alone does not solve the task: the adapters must
    again = make_synthetic(base, tokenizer, None, teacher_rank=t.teacher_rank, teacher_strength=t.teacher_strength,
                           seq_len=t.seq_len, n_train=400, n_eval=200, keep=0.5)
    assert list(again["train"]["input_ids"]) == list(splits["train"]["input_ids"])  # the same task every run
