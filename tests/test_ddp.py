"""DDP on CPU (gloo, 2 processes, on one node and as two torchrun nodes on 127.0.0.1): distinct
training shards, every validation image counted once, one run folder, and the same metrics as one
process evaluating the same weights."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from detlit.model.module import DetectionModule

from .conftest import REPO, quiet_trainer, tiny_cli_args, tiny_datamodule

pytestmark = pytest.mark.slow


def _ddp_args(sample_dir: Path, probe_dir: Path) -> list[str]:
    return [
        f"--config={REPO / 'configs' / 'sample_cpu.yaml'}",
        *tiny_cli_args(sample_dir),
        "--data.batch_size=1",
        "--trainer.accelerator=cpu",
        "--trainer.strategy=ddp",
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=3",
        "--trainer.num_sanity_val_steps=0",
        "--trainer.callbacks+=tests.probes.RecordImageIds",
        f"--trainer.callbacks.out_dir={probe_dir}",
    ]


def _check_two_process_run(sample_dir: Path, run_dir: Path, probe_dir: Path) -> None:
    """What a 2-process run must have done, whatever launched it."""
    ranks = [json.loads((probe_dir / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]

    train = [set(r["train"]) for r in ranks]
    assert len(ranks[0]["train"]) == len(ranks[1]["train"]) == 3
    assert not train[0] & train[1]  # each rank trains on its own shard

    val_ids = {image["id"] for image in json.loads((sample_dir / "val.json").read_text())["images"]}
    val = [r["val"] for r in ranks]
    assert sorted(val[0] + val[1]) == sorted(val_ids)  # every validation image exactly once

    # rank 0 alone wrote the run folder and its checkpoint
    assert len(list((run_dir / "runs").glob("*/version_*"))) == 1
    checkpoints = list((run_dir / "runs").glob("*/version_*/checkpoints/last.ckpt"))
    assert len(checkpoints) == 1
    module = DetectionModule.load_from_checkpoint(checkpoints[0], map_location="cpu")
    single = quiet_trainer().validate(module, datamodule=tiny_datamodule(sample_dir, batch_size=1), verbose=False)[0]
    keys = ("val/map", "val/map50", "val/map_medium", "val/mar10", "val/mar100")
    assert any(single[key] > 0 for key in keys)  # not a comparison of zeros
    for key in keys:
        assert ranks[0]["metrics"][key] == pytest.approx(single[key], abs=1e-6), key
        assert ranks[1]["metrics"][key] == pytest.approx(single[key], abs=1e-6), key


def test_two_process_ddp_matches_one_process(sample_dir: Path, tmp_path: Path) -> None:
    probe_dir = tmp_path / "probe"
    args = [*_ddp_args(sample_dir, probe_dir), "--trainer.devices=2"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "detlit.fit", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr[-4000:]
    _check_two_process_run(sample_dir, tmp_path, probe_dir)


def test_two_torchrun_nodes_match_one_process(sample_dir: Path, tmp_path: Path) -> None:
    """Two torchrun "nodes" on 127.0.0.1, one process each: Lightning's torchelastic environment,
    ``--trainer.num_nodes 2``, as docs/training.md shows for several machines."""
    probe_dir = tmp_path / "probe"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    args = [*_ddp_args(sample_dir, probe_dir), "--trainer.num_nodes=2", "--trainer.devices=1"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    nodes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes=2",
                "--nproc_per_node=1",
                f"--node_rank={node}",
                "--master_addr=127.0.0.1",
                f"--master_port={port}",
                "-m",
                "detlit.fit",
                *args,
            ],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for node in (0, 1)
    ]
    outputs = [node.communicate(timeout=900) for node in nodes]
    for node, (_, stderr) in zip(nodes, outputs, strict=True):
        assert node.returncode == 0, stderr[-4000:]
    _check_two_process_run(sample_dir, tmp_path, probe_dir)
