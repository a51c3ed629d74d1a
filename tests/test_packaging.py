"""The package: a wheel with configs and the sample generator, and a `detlit` command that works
from a fresh virtual environment."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

import detlit
from detlit.data.sample import write_sample

from .conftest import REPO

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(REPO)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    (path,) = out.glob("detlit-*.whl")
    return path


def test_wheel_contents(wheel: Path) -> None:
    assert f"detlit-{detlit.__version__}-" in wheel.name  # the version has one home: detlit/__init__.py
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in ("detlit/configs/sample_cpu.yaml", "detlit/configs/faster_rcnn_R50_FPN.yaml", "detlit/sample.py"):
        assert expected in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "detlit = detlit.__main__:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_fresh_environment_runs_detlit(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stderr[-2000:]
    # detlit's dependencies (torch, detectron2, ...) come from the project's environment, listed
    # after the fresh site-packages: the detlit that runs is the wheel's.
    fresh_site = Path(
        subprocess.check_output(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], text=True
        ).strip()
    )
    (fresh_site / "project_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    where = subprocess.check_output(
        [str(python), "-c", "import detlit; print(detlit.__file__)"], text=True, cwd=tmp_path
    )
    assert where.startswith(str(venv))

    env = subprocess.run(
        [str(venv / "bin" / "detlit"), "env"], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert env.returncode == 0, env.stderr[-2000:]
    assert "detectron2" in env.stdout and detlit.__version__ in env.stdout
    write_sample(tmp_path / "sample", train=4, val=2)
    check = subprocess.run(
        [
            str(venv / "bin" / "detlit"),
            "check",
            str(tmp_path / "sample" / "train.json"),
            "--images",
            str(tmp_path / "sample" / "train"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert check.returncode == 0, check.stderr[-2000:]
    config = subprocess.run(
        [str(venv / "bin" / "detlit"), "config", "sample_cpu"], capture_output=True, text=True, cwd=tmp_path
    )
    assert config.returncode == 0 and "MODEL.RESNETS.DEPTH: 18" in config.stdout
