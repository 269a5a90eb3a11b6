"""A 2-process DDP run (torchrun, gloo, CPU) ends where 1 process with the same global batch
ends; the accuracy evaluator's summed counts and all_gather_object see both processes. With
trained BatchNorm that holds with ``sync_bn`` only (and the trainer warns without it)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

SCRIPT = textwrap.dedent(
    """
    import sys
    import torch
    sys.path.insert(0, sys.argv[1])
    import conftest  # the engine tests' tiny model and data
    from torchdcn.engine import Trainer, OptimConfig, init_distributed, seed_everything
    from torchdcn.engine import distributed

    info = init_distributed()
    torch.set_num_threads(1)
    seed_everything(0)
    model = conftest.TinyNet()
    data = conftest._tiny_data(48)
    cfg = conftest._tiny_config(epochs=2, batch_size=8, optim=OptimConfig("adamw", lr=0.01),
                                output_dir=sys.argv[3], checkpoint_every=5)
    result = Trainer(model, data, cfg, eval_sets={"train": data}).fit()
    gathered = distributed.all_gather_object({"rank": info.rank})
    if info.is_main:
        torch.save({"model": model.state_dict(), "accuracy": result.accuracy,
                    "world": info.world_size, "gathered": gathered}, sys.argv[2])
    distributed.cleanup()
    """
)


def _run(cmd: list[str], tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_two_process_gloo_run_equals_one_process(tmp_path):
    script = tmp_path / "ddp_tiny.py"
    script.write_text(SCRIPT)
    here = str(Path(__file__).parent)
    _run([sys.executable, str(script), here, "one.pt", "run1"], tmp_path)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    _run([*torchrun, "--nproc-per-node", "2", str(script), here, "two.pt", "run2"], tmp_path)
    one = torch.load(tmp_path / "one.pt", weights_only=True)
    two = torch.load(tmp_path / "two.pt", weights_only=True)
    assert one["world"] == 1 and two["world"] == 2
    assert one["gathered"] == [{"rank": 0}] and two["gathered"] == [{"rank": 0}, {"rank": 1}]
    for key, value in one["model"].items():
        # same batches and the same update; only float summation order differs
        torch.testing.assert_close(two["model"][key], value, rtol=1e-4, atol=1e-5, msg=key)
    assert two["accuracy"] == one["accuracy"]
    # rank 0 wrote the checkpoint
    assert (tmp_path / "run2" / "last.pt").exists()


BN_SCRIPT = textwrap.dedent(
    """
    import sys
    import warnings
    import torch
    from torch import nn
    sys.path.insert(0, sys.argv[1])
    import conftest  # the engine tests' tiny data and settings
    from torchdcn.engine import Trainer, OptimConfig, init_distributed
    from torchdcn.engine import distributed

    def bn_net():
        # no conv bias before BatchNorm: its gradient is zero up to rounding, which AdamW's
        # normalised step would turn into updates that differ between any two summation orders
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
        )

    info = init_distributed()
    torch.set_num_threads(1)
    data = conftest._tiny_data(48)
    out = {"world": info.world_size}
    for sync in (True, False):
        cfg = conftest._tiny_config(epochs=1, batch_size=8, optim=OptimConfig("adamw", lr=0.05),
                                    sync_bn=sync)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer = Trainer(bn_net(), data, cfg)
        trainer.fit()
        out[sync] = {"model": trainer.model.state_dict(), "warnings": trainer.setting_warnings,
                     "layers": sorted({type(m).__name__ for m in trainer.model.modules()})}
    if info.is_main:
        torch.save(out, sys.argv[2])
    distributed.cleanup()
    """
)


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_two_processes_with_trained_batchnorm_equal_one_only_with_sync_bn(tmp_path):
    script = tmp_path / "ddp_bn.py"
    script.write_text(BN_SCRIPT)
    here = str(Path(__file__).parent)
    _run([sys.executable, str(script), here, "one.pt"], tmp_path)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    _run([*torchrun, "--nproc-per-node", "2", str(script), here, "two.pt"], tmp_path)
    one = torch.load(tmp_path / "one.pt", weights_only=True)
    two = torch.load(tmp_path / "two.pt", weights_only=True)
    assert one["world"] == 1 and two["world"] == 2
    reference = one[False]["model"]  # one process: plain BatchNorm over the global batch of 8
    for key, value in reference.items():  # sync_bn changes nothing in 1 process
        torch.testing.assert_close(one[True]["model"][key], value, rtol=0, atol=0, msg=key)
    assert "AllReduceBatchNorm" in two[True]["layers"] and two[True]["warnings"] == []
    synced = two[True]["model"]
    assert synced.keys() == reference.keys()  # the checkpoint keys of the unconverted model
    for key, value in reference.items():
        # weights and running statistics: float summation order only
        torch.testing.assert_close(synced[key], value, rtol=1e-4, atol=1e-5, msg=key)
    # without it each process normalises by its own 4 samples: another run, and a warning
    apart = two[False]["model"]
    assert max((apart[k] - v).abs().max().item() for k, v in reference.items()) > 1e-3
    (message,) = two[False]["warnings"]
    assert "2 BatchNorm layers (e.g. 1) normalise by the statistics of each process's 4" in message
    assert "set sync_bn (torchdcn train --sync-bn)" in message
    assert one[False]["warnings"] == []  # one process: nothing to warn about
