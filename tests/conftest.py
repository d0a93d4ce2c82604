"""Fixtures shared by the tests (helpers they import are in helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def glue_dir(tmp_path_factory) -> Path:
    from glue_fixtures import write_glue_dir

    return write_glue_dir(tmp_path_factory.mktemp("glue"), n_train=40, n_dev=16)
