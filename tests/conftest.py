"""Shared fixtures: small model packages and the location of the real images."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

DATA_ENV = "EDGE_INSPECT_DATA"


@pytest.fixture
def brightness_package(tmp_path: Path) -> Path:
    from tests.fixtures import make_brightness_package

    return make_brightness_package(tmp_path / "brightness")


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The folder of real inspection images named by EDGE_INSPECT_DATA; skips the test when absent."""
    value = os.environ.get(DATA_ENV)
    if not value:
        pytest.skip(f"{DATA_ENV} is not set; point it at the real image folder to run this test")
    path = Path(value)
    if not path.is_dir():
        pytest.skip(f"{DATA_ENV}={value} is not a folder")
    return path
