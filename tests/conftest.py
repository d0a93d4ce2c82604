"""Fixtures shared by the tests (helpers they import are in helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def glue_dir(tmp_path_factory) -> Path:
    from glue_fixtures import write_glue_dir

    return write_glue_dir(tmp_path_factory.mktemp("glue"), n_train=40, n_dev=16)
