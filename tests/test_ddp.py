"""Two processes under torchrun (gloo on loopback) train what one process trains on the same
global batches."""

import pathlib
import subprocess
import sys

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import ddp_worker  # noqa: E402


def test_two_processes_equal_one(tmp_path):
    worker = pathlib.Path(ddp_worker.__file__)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            str(worker),
            str(tmp_path / "ddp"),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    ddp = load_file(str(tmp_path / "ddp" / "final.safetensors"))
    single = ddp_worker.train(tmp_path / "single").state_dict()
    assert set(ddp) == set(single)
    for k, v in single.items():
        torch.testing.assert_close(ddp[k], v, rtol=1e-5, atol=1e-6)
    # rank 0 alone wrote the run directory, with the same metric lines as the single process
    ddp_lines = (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()
    assert len(ddp_lines) == len((tmp_path / "single" / "metrics.jsonl").read_text().splitlines())
