"""Test-wide settings: never touch the network (hub calls fail fast instead of hanging)."""

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):  # one BLAS/OpenMP thread per xdist worker: no oversubscription
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
sys.path.insert(0, str(Path(__file__).parent))  # tiny_models
