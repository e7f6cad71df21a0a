"""Test setup: the Hugging Face hub is never contacted; a per-session cache directory stands in for it."""

import os
import tempfile

# Set before anything imports huggingface_hub, which reads these once.
_CACHE = tempfile.mkdtemp(prefix="sensorium-hf-cache-")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_CACHE"] = _CACHE
os.environ["HF_HOME"] = os.path.join(_CACHE, "home")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import pytest  # noqa: E402

from helpers import FIXTURES, pe_models  # noqa: E402


@pytest.fixture(scope="session")
def hf_cache() -> str:
    return _CACHE


@pytest.fixture(scope="session")
def media():
    return FIXTURES / "media"


def pytest_report_header(config):
    return f"PE fixture models: {', '.join(pe_models())}"
