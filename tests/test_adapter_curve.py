"""dylora-adapter-curve on an adapter written by PEFT itself: its record, its curve and a smaller export."""

from __future__ import annotations

import json

import pytest
import torch

from dylora import records
from dylora.cli import adapter_curve
from dylora.cli.compose import compose_spec
from dylora.models import load_model, load_tokenizer
from dylora.tasks.registry import num_labels
from helpers import tiny_overrides


def base_model(spec):
    """The base the tool builds for ``spec`` (a tiny random model: same seed, same weights)."""
    torch.manual_seed(spec.seed)
    tokenizer = load_tokenizer(spec.model)
    return load_model(spec.model, tokenizer, num_labels(spec)), tokenizer


@pytest.fixture(scope="module")
def peft_adapter(tmp_path_factory, glue_dir):
    from peft import LoraConfig, get_peft_model

    overrides = tiny_overrides("task=sst2", f"data.glue_dir={glue_dir}")
    spec = compose_spec(overrides)
    base, _ = base_model(spec)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"],
                                                 task_type="SEQ_CLS"))
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name or "modules_to_save" in name:  # trained factors and head, non-zero
                param.copy_(torch.randn(param.shape, generator=gen) * 0.5)
    out = tmp_path_factory.mktemp("peft") / "adapter"
    peft_model.save_pretrained(str(out))
    return out, overrides, peft_model.eval()


def logits_on(model, data, n: int = 6) -> torch.Tensor:
    batch = data.collate(data.train[:n])
    batch.pop("labels")
    with torch.no_grad():
        return model.eval()(**batch).logits


def test_the_curve_of_a_peft_adapter_is_a_run_record_whose_top_rank_is_the_adapter_itself(peft_adapter, tmp_path,
                                                                                           capsys):
    from peft import PeftModel

    from dylora import merged
    from dylora.runner import load_finished
    from dylora.spec import RunSpec

    adapter_dir, overrides, peft_model = peft_adapter
    small = tmp_path / "small"
    adapter_curve.main([str(adapter_dir), *overrides, f"out_dir={tmp_path / 'runs'}", "--export-rank", "2",
                        "--export-to", str(small)])
    assert "| rank |" in capsys.readouterr().out
    [record] = list(records.iter_runs(tmp_path / "runs"))
    assert record.done and record.experiment == "adapter_curve" and record.method == "peft_lora"
    assert record.config["source_adapter"]["sha256"] == records.sha256_file(adapter_dir / "adapter_model.safetensors")
    assert record.env["train_steps"] == 0
    rows = {(m.truncation, m.rank): m.value for m in record.metrics if m.metric == "accuracy"}
    assert set(rows) == {(t, b) for t in ("prefix", "svd") for b in range(1, 5)} | {("prefix", 0)}
    # independently: the task's own evaluation of PEFT's model is the curve at rank r, under both truncations
    spec = RunSpec.from_dict(record.config)
    model, data = load_finished(spec, record.path, torch.device("cpu"))
    assert data.evaluate(peft_model, 4)["validation"]["accuracy"] == rows[("prefix", 4)] == rows[("svd", 4)]
    # and rank 0 is PEFT's model with every lora_B zeroed: no update, the trained head kept
    import copy

    headless_update = copy.deepcopy(peft_model)
    with torch.no_grad():
        for name, param in headless_update.named_parameters():
            if "lora_B" in name:
                param.zero_()
    assert data.evaluate(headless_update, 0)["validation"]["accuracy"] == rows[("prefix", 0)]
    with merged(model, 4):
        torch.testing.assert_close(logits_on(model, data), logits_on(peft_model, data), rtol=1e-4, atol=1e-5)
    # the smaller export is our rank-2 SVD truncation, as PEFT loads it
    with merged(model, 2, "svd"):
        expected = logits_on(model, data)
    base, _ = base_model(spec)
    torch.testing.assert_close(logits_on(PeftModel.from_pretrained(base, str(small)), data), expected,
                               rtol=1e-4, atol=1e-5)
    assert json.loads((small / "adapter_config.json").read_text())["r"] == 2


def test_dylora_report_renders_the_adapters_curve_beside_its_svd_rows(peft_adapter, tmp_path):
    import pandas as pd

    from dylora.lab.report import build_report

    adapter_dir, overrides, _ = peft_adapter
    adapter_curve.main([str(adapter_dir), *overrides, f"out_dir={tmp_path / 'runs'}"])
    build_report(tmp_path / "runs", tmp_path / "results")
    table2 = pd.read_csv(tmp_path / "results" / "adapter_curve" / "table2.csv")
    assert list(dict.fromkeys(table2["method"])) == ["peft_lora", "peft_lora+svd"]
    assert "| PEFT LoRA adapter + SVD |" in (tmp_path / "results" / "adapter_curve" / "table2.md").read_text()


def test_an_adapter_that_is_not_plain_lora_is_refused_with_its_reason(peft_adapter, tmp_path, capsys):
    adapter_dir, overrides, _ = peft_adapter
    dora = tmp_path / "dora"
    dora.mkdir()
    (dora / "adapter_model.safetensors").write_bytes((adapter_dir / "adapter_model.safetensors").read_bytes())
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    (dora / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    for where, message in ((dora, "needs a plain LoRA adapter at one rank, but DoRA (use_dora)"),
                           (tmp_path / "none", "is not a PEFT adapter directory: adapter_config.json is missing")):
        with pytest.raises(SystemExit):
            adapter_curve.main([str(where), *overrides, f"out_dir={tmp_path / 'runs'}"])
        assert message in capsys.readouterr().err
