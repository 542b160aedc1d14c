"""Shared pytest fixtures and helpers."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest


def has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


requires_torch = pytest.mark.skipif(not has_module("torch"), reason="torch is not installed (pip install .[test])")
requires_trl = pytest.mark.skipif(not has_module("trl"), reason="trl is not installed (pip install .[test])")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20261125)
