"""Test set-up: no network, no user caches, small thread pools."""

from __future__ import annotations

import os

# Any attempt to reach the hub fails instead of downloading.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANOGEN_CACHE", str(tmp_path_factory.getbasetemp() / "anogen-cache"))


@pytest.fixture(scope="session")
def tiny_backbone():
    """The random tiny backbone (seed 0), built once per session. Tests must not modify it."""
    from anogen.model.backbone import build_tiny

    return build_tiny(seed=0)
