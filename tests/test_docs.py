"""Every runnable command in the README and docs/ works: fenced blocks marked ```bash run``` are
extracted and executed, in order, on the sample data with a small trained model."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from detlit.data.sample import write_sample

from .conftest import REPO, tiny_cli_args

pytestmark = [pytest.mark.slow, pytest.mark.cli]

DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
BLOCK = re.compile(r"```bash run\n(.*?)```", re.DOTALL)


def runnable_commands(text: str) -> list[str]:
    """The commands of the ``bash run`` blocks, continuation lines joined, comments dropped."""
    commands = []
    for block in BLOCK.findall(text):
        for command in block.replace("\\\n", " ").splitlines():
            command = command.split(" #")[0].strip()
            if command and not command.startswith("#"):
                commands.append(command)
    return commands


def test_the_documents_hold_runnable_commands() -> None:
    found = {path.name: runnable_commands(path.read_text()) for path in DOCUMENTS}
    assert sum(len(c) for c in found.values()) >= 8, found
    for commands in found.values():
        for command in commands:
            assert command.startswith(("python -m detlit.", "detlit ")), command


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder laid out like the repository after `make sample` and a first training run."""
    root = tmp_path_factory.mktemp("docs")
    shutil.copytree(REPO / "configs", root / "configs")
    write_sample(root / "data" / "sample", train=12, val=6, seed=0)
    sample = root / "data" / "sample"
    args = [*tiny_cli_args(sample), "--trainer.max_epochs=1", "--trainer.limit_train_batches=3"]
    result = subprocess.run(
        [sys.executable, "-m", "detlit.fit", "--config=configs/sample_cpu.yaml", *args],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (root / "runs" / "sample" / "version_0" / "checkpoints" / "last.ckpt").is_file()
    return root


@pytest.mark.parametrize("document", DOCUMENTS, ids=[p.name for p in DOCUMENTS])
def test_runnable_commands_work(document: Path, workspace: Path) -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for command in runnable_commands(document.read_text()):
        argv = shlex.split(command)
        argv = [sys.executable, *argv[1:]] if argv[0] == "python" else argv
        result = subprocess.run(argv, cwd=workspace, env=env, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, f"{document.name}: `{command}` failed:\n{result.stderr[-3000:]}"


def test_no_document_names_a_folder_of_the_machine_it_was_measured_on() -> None:
    """Published figures name the folders a reader sets ($DETLIT_RBC_DIR, $WORK), not this machine's."""
    machine = re.compile(r"(?<![\w.$])/(?:work|root|home|tmp)/")
    for path in [REPO / "README.md", REPO / "BENCHMARKS.md", REPO / "CHANGELOG.md", *(REPO / "docs").glob("*.md")]:
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            assert not machine.search(line), f"{path.name}:{number} names a folder of this machine: {line[:160]}"
