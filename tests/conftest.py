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


_THREAD_VARS = ("OMP_NUM_THREADS", "ANOGEN_THREADS_EXPORTED", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                "OMP_WAIT_POLICY")


@pytest.fixture(autouse=True)
def _restore_thread_variables():
    """CLI tests run the root command in this process, which exports the thread policy's variables: keep them
    from leaking into later tests' subprocesses."""
    before = {name: os.environ.get(name) for name in _THREAD_VARS}
    yield
    for name, value in before.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
