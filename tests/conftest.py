"""Test-session settings."""

import os

import torch

# Under pytest-xdist each worker is its own process; two workers with two OpenMP threads each on a
# two-core machine oversubscribe it, and spinning OpenMP threads then slow small ops by 10-50x.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
