import os
from pathlib import Path

import pytest

# Two processes spinning OpenMP threads on 2 cores slow each other down many times over.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
CORPUS = ROOT.parent / "shared" / "corpus"


@pytest.fixture
def examples() -> Path:
    return EXAMPLES
