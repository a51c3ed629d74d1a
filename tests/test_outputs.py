"""Every output written completely or not at all: the output guard, the folder lock, atomic and paired
writes, stale temporaries, full disks, and Ctrl-C during a split."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from detlit.common import outputs
from detlit.common.command import write_message
from detlit.common.outputs import (
    LOCK_NAME,
    check_not_images,
    check_outputs,
    write_lock,
    write_text,
    write_together,
)
from detlit.data.sample import write_sample
from detlit.data.split import check_pair, split, split_marker
from detlit.errors import ConfigError, DataError
from detlit.inference.predict import save_drawing

from .conftest import REPO
from .test_reliability import mounted

ENV = {**os.environ, "PYTHONPATH": str(REPO)}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 synthetic images with train.json under shapes/train."""
    root = tmp_path_factory.mktemp("shapes")
    write_sample(root, train=12, val=1, seed=5)
    return root


def _temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*") if p.name.endswith(".tmp")]


def _main(command: str, argv: list[str]) -> int:
    import importlib

    with pytest.raises(SystemExit) as stopped:
        importlib.import_module(f"detlit.{command}").main(argv)
    return int(stopped.value.code or 0)


# --- the output guard ----------------------------------------------------------------------


def test_two_outputs_naming_one_file_are_refused(tmp_path: Path) -> None:
    report = tmp_path / "x.json"
    with pytest.raises(ConfigError, match=r"--report would write .*x\.json, which --fix writes too; choose another"):
        check_outputs({"--fix": [report, tmp_path / "x.repairs.txt"], "--report": [report]})
    (tmp_path / "sub").mkdir()
    with pytest.raises(ConfigError, match="would write .* twice"):  # one file by two spellings
        check_outputs([tmp_path / "a.png", tmp_path / "sub" / ".." / "a.png"])
    report.write_text("{}")
    os.link(report, tmp_path / "hard.json")
    with pytest.raises(ConfigError, match="hard.json, which --fix writes too"):  # and by a hard link
        check_outputs({"--fix": [report], "--report": [tmp_path / "hard.json"]}, overwrite=True)
    check_outputs({"--fix": [report], "--report": [tmp_path / "other.json"]}, overwrite=True)


def test_an_image_of_the_dataset_is_an_input_even_with_overwrite(shapes: Path, tmp_path: Path) -> None:
    listed = json.loads((shapes / "train.json").read_text())
    names = [image["file_name"] for image in listed["images"]]
    images = [(shapes / "train", names)]
    target = shapes / "train" / names[3]
    with pytest.raises(ConfigError, match=r"an image of the dataset in .*train\); choose another --fix"):
        check_outputs({"--fix": [target]}, overwrite=True, images=images)
    # the same image named through a link to its folder, and through a spelling with ./
    link = tmp_path / "link"
    link.symlink_to(shapes / "train")
    with pytest.raises(ConfigError, match="an image of the dataset"):
        check_outputs([link / names[3]], overwrite=True, images=images)
    with pytest.raises(ConfigError, match="an image of the dataset"):
        check_outputs([target], overwrite=True, images=[(shapes / "train", [f"./{names[3]}"])])
    with pytest.raises(ConfigError, match="an image of the dataset"):
        check_not_images([target], images)
    # a file there that the json does not list may be replaced; a new file anywhere may be written
    (tmp_path / "unlisted.jpg").write_bytes(b"x")
    check_outputs([tmp_path / "unlisted.jpg", shapes / "train" / "new.json"], overwrite=True, images=images)


def test_the_guard_looks_at_each_path_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # 2000 inputs and 2000 outputs (predict's shape): a pairwise comparison would take millions of
    # stat calls; 100000 listed images are never looked at when no output lies among them.
    inputs = [tmp_path / f"in{i}.jpg" for i in range(2000)]
    for path in inputs[:50]:
        path.write_bytes(b"x")
    outs = [tmp_path / "out" / f"in{i}.png" for i in range(2000)]
    names = [f"img{i:06d}.jpg" for i in range(100_000)]
    calls = 0
    real_stat = os.stat

    def counting_stat(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return real_stat(*args, **kwargs)

    monkeypatch.setattr(os, "stat", counting_stat)
    check_outputs(outs, inputs=inputs, images=[(tmp_path / "images", names)])
    assert calls < 10 * (len(inputs) + len(outs)), calls


# --- one writer per folder -----------------------------------------------------------------


def _hold_lock(folder: Path) -> subprocess.Popen[str]:
    """Another process writing into ``folder``: it holds the lock until its stdin closes."""
    code = (
        "import sys; from pathlib import Path; from detlit.common.outputs import write_lock\n"
        f"with write_lock(Path({str(folder)!r})):\n"
        "    print('locked', flush=True); sys.stdin.read()\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code], env=ENV, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None and process.stdout.readline() == "locked\n"
    return process


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[str]]]:
    folder = tmp_path / "busy"
    process = _hold_lock(folder)
    yield folder, process
    if process.poll() is None:
        process.kill()
    process.wait(timeout=30)


@pytest.mark.parametrize("command", ["split", "sample", "check", "evaluate"])
def test_a_folder_another_command_writes_is_refused(
    command: str, holder: tuple[Path, subprocess.Popen[str]], shapes: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, process = holder
    train = ["--images", str(shapes / "train")]
    argv = {
        "split": [str(shapes / "train.json"), *train, "--out", str(folder)],
        "sample": ["--out", str(folder), "--train", "1", "--val", "1"],
        "check": [str(shapes / "train.json"), *train, "--report", str(folder / "report.json"), "--quiet"],
        "evaluate": [
            "--results",
            str(shapes / "results.json"),
            "--json",
            str(shapes / "train.json"),
            "--out",
            str(folder),
        ],
    }[command]
    if command == "evaluate":
        (shapes / "results.json").write_text(
            json.dumps([{"image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 0.9}])
        )
    assert _main(command, argv) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert errors == [
        f"error: {folder} is being written by another detlit command (pid {process.pid}); wait until it ends, "
        "or choose another " + ("--report" if command == "check" else "--out")
    ], err
    assert [p.name for p in folder.iterdir()] == [LOCK_NAME], "the refused command wrote nothing"
    assert (folder / LOCK_NAME).read_text().split()[0] == str(process.pid)


def test_the_lock_goes_with_its_holder(tmp_path: Path) -> None:
    folder = tmp_path / "out"
    process = _hold_lock(folder)
    assert process.stdin is not None
    process.stdin.close()  # the holder ends normally: the lock file goes with it
    assert process.wait(timeout=30) == 0
    assert not (folder / LOCK_NAME).exists()
    process = _hold_lock(folder)
    process.kill()  # killed: the kernel drops the lock; the file stays until the next command
    process.wait(timeout=30)
    assert (folder / LOCK_NAME).exists()
    with write_lock(folder):
        assert (folder / LOCK_NAME).read_text().split()[0] == str(os.getpid())
    assert list(folder.iterdir()) == []


def test_the_lock_file_removed_under_a_waiting_command_is_not_held(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The holder removes the file between this command's open and its flock: the lock this
    # command then gets is on a file no one else opens, so it must lock the path's new file.
    folder = tmp_path / "out"
    folder.mkdir()
    real_flock = outputs.fcntl.flock
    calls = 0

    def holder_leaves(fd: int, operation: int) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            (folder / LOCK_NAME).unlink()
        real_flock(fd, operation)

    monkeypatch.setattr(outputs.fcntl, "flock", holder_leaves)
    with write_lock(folder):
        assert calls == 2
        with pytest.raises(ConfigError, match=f"pid {os.getpid()}"), write_lock(folder):  # the path's file is held
            pass
    assert not (folder / LOCK_NAME).exists()


def test_a_refused_or_failed_command_leaves_no_folder_it_created(tmp_path: Path) -> None:
    out = tmp_path / "new" / "deeper"
    with pytest.raises(DataError):
        split([tmp_path / "missing.json"], [tmp_path], out)
    assert not (tmp_path / "new").exists()


# --- atomic writes, full disks, stale temporaries ------------------------------------------


def test_a_full_disk_names_the_file_and_leaves_no_part(tmp_path: Path) -> None:
    with mounted(tmp_path / "disk", "size=64k") as disk:
        (disk / "drawn.png").write_bytes(b"the previous drawing")
        noise = np.asarray(Image.effect_noise((400, 400), 100).convert("RGB"))  # 480 kB, barely compressible
        with pytest.raises(OSError) as failed:
            save_drawing(disk / "drawn.png", noise)
        assert failed.value.filename == str(disk / "drawn.png")
        assert write_message(failed.value).startswith(f"could not write {disk / 'drawn.png'} (No space left on device)")
        assert (disk / "drawn.png").read_bytes() == b"the previous drawing"
        assert not _temporaries(disk)


def test_sample_onto_a_full_disk_is_one_sentence_and_leaves_whole_images(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with mounted(tmp_path / "disk", "size=96k") as disk:
        assert _main("sample", ["--out", str(disk / "s"), "--train", "40", "--val", "4"]) == 2
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and "Traceback" not in err, err[-2000:]
        assert f"could not write {disk / 's' / 'train'}/train_00" in errors[0], errors[0]
        assert "No space left on device" in errors[0]
        drawn = sorted((disk / "s" / "train").glob("*.jpg"))
        assert drawn, "the disk held some images before it was full"
        for path in drawn:  # each image there is whole
            with Image.open(path) as image:
                image.load()
        assert not _temporaries(disk) and not (disk / "s" / LOCK_NAME).exists()


def _killed_writer(target: Path) -> int:
    """The pid of a process killed while it wrote ``target`` (its temporary left behind)."""
    code = (
        "import time; from pathlib import Path; from detlit.common.outputs import atomic_write\n"
        f"with atomic_write(Path({str(target)!r})) as handle:\n"
        "    handle.write(b'half of it'); handle.flush(); print('writing', flush=True); time.sleep(120)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", code], env=ENV, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline() == "writing\n"
    process.kill()
    process.wait(timeout=30)
    return process.pid


def test_the_first_write_into_a_folder_removes_temporaries_of_dead_processes(tmp_path: Path) -> None:
    folder = tmp_path / "predictions"
    dead = _killed_writer(folder / "a.png")
    left = folder / f".a.png.{outputs.HOST}.{dead}.tmp"
    assert _temporaries(folder) == [left] and left.read_bytes() == b"half of it"
    live = folder / f".b.png.{outputs.HOST}.{os.getppid()}.tmp"  # a process that runs
    elsewhere = folder / f".c.png.other-host.{dead}.tmp"  # a shared folder: another machine's
    for kept in (live, elsewhere):
        kept.write_bytes(b"in progress")
    write_text(folder / "predictions.json", "{}")
    assert sorted(_temporaries(folder)) == sorted([live, elsewhere])
    # once per folder and process, not per write (predict writes thousands of files into one)
    later = folder / f".d.png.{outputs.HOST}.{dead}.tmp"
    later.write_bytes(b"left later")
    write_text(folder / "predictions.json", "{}")
    assert later.exists()
    assert outputs.remove_stale_temporaries(folder) == [later]


def test_a_pair_is_written_whole_or_not_at_all(tmp_path: Path) -> None:
    first, second = tmp_path / "train.json", tmp_path / "val.json"
    write_together({first: b"old train", second: b"old val"})
    (tmp_path / "blocked").write_text("a file where a folder would be")
    with pytest.raises(OSError):
        write_together({first: b"new train", tmp_path / "blocked" / "val.json": b"new val"})
    assert first.read_bytes() == b"old train" and not _temporaries(tmp_path)


def test_ctrl_c_during_the_renames_takes_effect_after_both(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = tmp_path / "train.json", tmp_path / "val.json"
    write_together({first: b"old train", second: b"old val"})
    real_replace = os.replace
    renamed = []

    def interrupted(source: Any, target: Any) -> None:
        if not renamed:
            os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C between the two renames
        real_replace(source, target)
        renamed.append(target)

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_together({first: b"new train", second: b"new val"})
    assert (first.read_bytes(), second.read_bytes()) == (b"new train", b"new val")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


# --- split: pairs, paths, patterns, Ctrl-C ------------------------------------------------


def test_split_marks_both_files_of_a_pair_alike(shapes: Path, tmp_path: Path) -> None:
    for out, fraction in (("a", 0.25), ("b", 0.5)):
        split([shapes / "train.json"], [shapes / "train"], tmp_path / out, val_fraction=fraction, quiet=True)
    a_train, a_val = split_marker(tmp_path / "a" / "train.json"), split_marker(tmp_path / "a" / "val.json")
    assert a_train is not None and a_val is not None
    assert (a_train["part"], a_val["part"]) == ("train", "val") and a_train["id"] == a_val["id"]
    assert len(a_train["id"]) == 16 and split_marker(tmp_path / "b" / "val.json") != a_val
    assert split_marker(shapes / "train.json") is None
    check_pair(tmp_path / "a" / "train.json", tmp_path / "a" / "val.json")
    check_pair(tmp_path / "a" / "train.json", tmp_path / "b" / "val.json")  # two folders: a choice
    shutil.copy(tmp_path / "b" / "val.json", tmp_path / "a" / "val.json")  # an interrupted --overwrite
    with pytest.raises(DataError, match="come from two different splits"):
        check_pair(tmp_path / "a" / "train.json", tmp_path / "a" / "val.json")
    # splitting a split again leaves one marker per file, the new one
    split([tmp_path / "a" / "train.json"], [shapes / "train"], tmp_path / "c", val_fraction=0.3, quiet=True)
    text = (tmp_path / "c" / "train.json").read_text()
    assert text.count('"detlit_split"') == 1 and json.loads(text)["detlit_split"]["part"] == "train"


def test_check_refuses_a_mixed_pair(shapes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for out, fraction in (("a", 0.25), ("b", 0.5)):
        split([shapes / "train.json"], [shapes / "train"], tmp_path / out, val_fraction=fraction, quiet=True)
    images = ["--images", str(shapes / "train"), "--quiet"]
    pair = [str(tmp_path / "a" / "train.json"), "--val", str(tmp_path / "a" / "val.json")]
    assert _main("check", [*pair, *images]) == 0
    shutil.copy(tmp_path / "b" / "val.json", tmp_path / "a" / "val.json")
    assert _main("check", [*pair, *images]) == 2
    assert "come from two different splits" in capsys.readouterr().err


def test_check_writes_the_repaired_copy_and_its_change_log_together(shapes: Path, tmp_path: Path) -> None:
    broken = json.loads((shapes / "train.json").read_text())
    broken["annotations"][0]["bbox"] = [-5.0, 1.0, 10.0, 10.0]  # a box that starts left of the image
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    fixed = tmp_path / "fixed.json"
    args = [str(tmp_path / "broken.json"), "--images", str(shapes / "train"), "--fix", str(fixed), "--quiet"]
    assert _main("check", args) == 0
    assert json.loads(fixed.read_text())["annotations"][0]["bbox"][0] == 0.0
    assert "set annotations[0] bbox=[0.0, 1.0, 5.0, 10.0]" in (tmp_path / "fixed.repairs.txt").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.json", "fixed.json", "fixed.repairs.txt"]


def _split_interrupted(shapes: Path, out: Path, when: str) -> subprocess.CompletedProcess[str]:
    """``split --overwrite`` into ``out``, stopped by a real Ctrl-C at ``when``: ``hashing`` (reading
    the images) or ``staged`` (train.json's temporary written, val.json's not yet)."""
    code = f"""
import time
import detlit.common.outputs as outputs
import detlit.data.split as split
from detlit.split import main

def pause(what):
    print(what, flush=True)
    time.sleep(120)

hashes, prepare, calls = split.content_hashes, outputs._prepare_folder, []
def slow_hashes(*args, **kwargs):
    pause("hashing") if {when!r} == "hashing" else None
    return hashes(*args, **kwargs)
def slow_second(folder):
    calls.append(folder)
    pause("staged") if {when!r} == "staged" and len(calls) == 2 else None
    prepare(folder)
split.content_hashes, outputs._prepare_folder = slow_hashes, slow_second
main([{str(shapes / "train.json")!r}, "--images", {str(shapes / "train")!r}, "--out", {str(out)!r},
      "--overwrite", "--seed", "7", "--quiet"])
"""
    process = subprocess.Popen(
        [sys.executable, "-c", code],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as from a terminal
    )
    assert process.stdout is not None and process.stdout.readline() == f"{when}\n"
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


@pytest.mark.cli
@pytest.mark.parametrize("when", ["hashing", "staged"])
def test_ctrl_c_during_split_is_one_line_and_leaves_the_old_pair(shapes: Path, tmp_path: Path, when: str) -> None:
    out = tmp_path / "split"
    split([shapes / "train.json"], [shapes / "train"], out, quiet=True)
    before = {name: (out / name).read_bytes() for name in ("train.json", "val.json")}
    result = _split_interrupted(shapes, out, when)
    assert result.returncode == 130, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if not line.startswith("INFO ")]
    assert lines == ["stopped by Ctrl-C; split writes train.json and val.json together or not at all"], lines
    assert {name: (out / name).read_bytes() for name in before} == before
    assert sorted(p.name for p in out.iterdir()) == ["train.json", "val.json"], "no temporary, no lock file"
