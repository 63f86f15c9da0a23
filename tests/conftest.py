"""Test-session settings."""

import os

import pytest
import torch

# Under pytest-xdist each worker is its own process; two workers with two OpenMP threads each on a
# two-core machine oversubscribe it, and spinning OpenMP threads then slow small ops by 10-50x.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    """A UTF-8 text of ~10,000 characters (two Python documentation topics) to train charlm on."""
    from pydoc_data.topics import topics

    path = tmp_path_factory.mktemp("data") / "text.txt"
    path.write_text("".join(topics[k] for k in sorted(topics)[:2]), encoding="utf-8")
    return path


@pytest.fixture
def quick_arima(monkeypatch):
    """forecast's ARIMA order search (66 fits, half a minute or more) replaced by (1, 0, 0), for
    tests of something else that train forecast (its own tests keep the search)."""
    from rnnkit.tasks.forecast import ForecastTask

    monkeypatch.setattr(ForecastTask, "arima_order", lambda self: (1, 0, 0))
