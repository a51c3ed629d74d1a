"""tools/install_detectron2.py: pinned sdist, pure-Python wheel, clear failures (no network)."""

from __future__ import annotations

import importlib.util
import io
import tarfile
import zipfile
from pathlib import Path
from types import ModuleType

import pytest

from .conftest import REPO


def _tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("install_detectron2", REPO / "tools" / "install_detectron2.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SETUP_PY = """
from setuptools import setup
setup(
    name="pb1-detectron2",
    install_requires=[
        "Pillow>=7.1", "yacs>=0.1.8", "dataclasses; python_version<'3.7'", "black==21.4b2", "hydra-core>=1.1"
    ],
)
"""


def _fake_sdist(path: Path) -> Path:
    files = {
        "pb1-detectron2-0.6/setup.py": SETUP_PY.encode(),
        "pb1-detectron2-0.6/LICENSE": b"Apache",
        "pb1-detectron2-0.6/detectron2/__init__.py": b"__version__ = '0.6'\n",
        "pb1-detectron2-0.6/detectron2/model_zoo/configs/Base-RCNN-FPN.yaml": b"MODEL: {}\n",
        "pb1-detectron2-0.6/detectron2/model_zoo/configs/COCO-Detection/a.yaml": b"_BASE_: x\n",
        "pb1-detectron2-0.6/tools/train_net.py": b"",
    }
    with tarfile.open(path, "w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def test_wheel_holds_package_and_configs_without_black(tmp_path: Path) -> None:
    tool = _tool()
    wheel = tool.build_wheel(_fake_sdist(tmp_path / "sdist.tar.gz"), tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = archive.read(f"detectron2-{tool.WHEEL_VERSION}.dist-info/METADATA").decode()
        record = archive.read(f"detectron2-{tool.WHEEL_VERSION}.dist-info/RECORD").decode()
    assert "detectron2/model_zoo/configs/COCO-Detection/a.yaml" in names
    assert "detectron2/model_zoo/configs/Base-RCNN-FPN.yaml" in names
    assert not any(n.startswith("tools/") for n in names)
    assert "Requires-Dist: yacs>=0.1.8" in metadata and "Requires-Dist: hydra-core>=1.1" in metadata
    assert "black" not in metadata and "dataclasses" not in metadata
    assert all(name in record for name in names)


def test_sha256_mismatch_stops_with_a_clear_message(tmp_path: Path) -> None:
    tool = _tool()
    sdist = _fake_sdist(tmp_path / tool.SDIST_FILE)
    with pytest.raises(tool.InstallError, match="is not the pinned pb1-detectron2 0.6"):
        tool.verify_sha256(sdist)
    code = tool.main(["--force", "--sdist", str(sdist), "--python", "python3"])
    assert code == 1


def test_nothing_to_do_when_detectron2_imports(capsys: pytest.CaptureFixture[str]) -> None:
    tool = _tool()
    assert tool.main([]) == 0
    assert "already importable" in capsys.readouterr().out


def test_pinned_hash_is_the_documented_one() -> None:
    assert _tool().SDIST_SHA256 == "5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"
