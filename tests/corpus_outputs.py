"""The corpus of bad inputs, area: Outputs written whole or not at all: pairs, locks, outputs that are inputs, paths."""

from __future__ import annotations

import atexit
import json
import shutil
from contextlib import ExitStack

from detlit.common.outputs import write_lock
from detlit.data.split import split

from .corpus import Case, Workspace, args, fit

# The lock another command would hold on {root}/locked while it writes there: flock conflicts
# between two open files of one process too, so the corpus's in-process command meets it.
_held = ExitStack()
atexit.register(_held.close)

CASES: list[Case] = [
    Case(
        "tile into its image folder",
        "tile",
        args("--json", "{sample}/train.json", "--images", "{sample}/train", "--out", "{sample}/train/tiles"),
        r"--out .*train/tiles lies inside the image folder .*train: the tiles would go among the images",
    ),
    Case(
        "split with a file name that climbs out of the image folder",
        "split",
        args("{root}/climbs-out.json", "--images", "{sample}/train", "--out", "{root}/split-climbs"),
        r"file_name '\.\./val/val_0000\.jpg', which points outside the image folder",
    ),
    Case(
        "split with an absolute file name",
        "split",
        args("{root}/absolute-name.json", "--images", "{sample}/train", "--out", "{root}/split-absolute"),
        "which points outside the image folder",
    ),
    Case(
        "repaired copy written over one of the dataset's images",
        "check",
        args(
            "{sample}/train.json", "--images", "{sample}/train", "--fix", "{sample}/train/train_0000.jpg", "--overwrite"
        ),
        r"--fix would write .*train_0000\.jpg, which is an input of this command \(an image of the dataset",
    ),
    Case(
        "repaired copy and report named alike",
        "check",
        args(
            "{sample}/train.json",
            "--images",
            "{sample}/train",
            "--fix",
            "{root}/same.json",
            "--report",
            "{root}/same.json",
        ),
        "--report would write .*same.json, which --fix writes too; choose another --report",
    ),
    Case(
        "split into a folder another command is writing",
        "split",
        args("{sample}/train.json", "--images", "{sample}/train", "--out", "{root}/locked"),
        r"locked is being written by another detlit command \(pid \d+\); wait until it ends",
    ),
    Case(
        "split with a group pattern that is no regular expression",
        "split",
        args(
            "{sample}/train.json",
            "--images",
            "{sample}/train",
            "--out",
            "{root}/split-pattern",
            "--group-pattern",
            "(.+",
        ),
        r"--group-pattern '\(\.\+' is not a valid regular expression \(missing \), unterminated subpattern",
    ),
    Case(
        "audit apply written over its json",
        "audit",
        args(
            "--apply",
            "{root}/options/other.csv",
            "--json",
            "{sample}/val.json",
            "--fix",
            "{sample}/val.json",
            "--overwrite",
        ),
        r"--fix would write .*val\.json, which is an input of this command; choose another --fix",
    ),
    Case(
        "audit into a folder another command is writing",
        "audit",
        args("--json", "{sample}/val.json", "--images", "{sample}/val", "--out", "{root}/locked", "--ckpt", "{ckpt}"),
        r"locked is being written by another detlit command \(pid \d+\); wait until it ends",
    ),
    Case(
        "train and val json from two different splits",
        "fit",
        fit(
            "--data.train_json={root}/mixed/train.json",
            "--data.train_images={sample}/train",
            "--data.val_json={root}/mixed/val.json",
            "--data.val_images={sample}/train",
        ),
        "come from two different splits .*: an interrupted split or two splits into one folder; run python -m "
        "detlit.split again",
    ),
]


def prepare(workspace: Workspace) -> None:
    """Write the files this area's cases name into ``workspace.root``."""
    root, sample = workspace.root, workspace.sample
    train = json.loads((sample / "train.json").read_text())
    train["images"][0]["file_name"] = "../val/val_0000.jpg"
    (root / "climbs-out.json").write_text(json.dumps(train))
    train["images"][0]["file_name"] = str((sample / "val" / "val_0001.jpg").resolve())
    (root / "absolute-name.json").write_text(json.dumps(train))
    # what an interrupted split --overwrite leaves: the new run's train.json beside the old run's val.json
    for name, fraction in (("split-a", 0.25), ("split-b", 0.5)):
        split([sample / "train.json"], [sample / "train"], root / name, val_fraction=fraction, quiet=True)
    (root / "mixed").mkdir()
    shutil.copy(root / "split-a" / "train.json", root / "mixed" / "train.json")
    shutil.copy(root / "split-b" / "val.json", root / "mixed" / "val.json")
    _held.enter_context(write_lock(root / "locked"))
