"""Fixtures shared by every test folder."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import shared_dir


@pytest.fixture(scope="session")
def shared() -> Path:
    """``<repo>/../shared`` (the corpus and Caffe's reference numbers), or skip."""
    return shared_dir()


@pytest.fixture(scope="session")
def weights_cache(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bool]:
    """(folder for generated caffemodels, whether to keep them): ``$ZOO_TEST_CACHE`` is kept across runs;
    otherwise a session temp folder whose big files tests delete once used (they add up to ~8 GB)."""
    env = os.environ.get("ZOO_TEST_CACHE")
    if env:
        Path(env).mkdir(parents=True, exist_ok=True)
        return Path(env), True
    return tmp_path_factory.mktemp("caffemodels"), False
