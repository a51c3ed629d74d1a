"""The corpus of bad inputs, area: numeric options and config fields out of range, and names
the filesystem cannot take.

Every setting is checked at start (``detlit.common.ranges``, ``detlit.training.settings``): the
optimizer's arguments, the trainer's and the checkpoint callbacks' fields, the data module's and
the model's (a crafted checkpoint's hyper-parameters included), every numeric option of the
commands, ``tune --storage``, and paths: named pipes and devices, names longer than the
filesystem takes, arguments with bytes that are not UTF-8.
"""

from __future__ import annotations

import os

import torch

from .corpus import Case, Workspace, args, fit

LONG = "n" * 300  # a file name of 300 bytes: every common filesystem stops at 255
AUDIT = ("--json", "{sample}/val.json", "--images", "{sample}/val", "--out")
SEARCH = ("--config", "{root}/search.yaml", "--search", "{root}/search.yaml", "--trials", "1", "--out", "{root}/t-opt")

CASES: list[Case] = [
    # --- the optimizer, built once at start ------------------------------------------------------
    Case("negative learning rate", "fit", fit("--model.optimizer.init_args.lr=-1"), r"init_args\.lr: SGD refuses"),
    Case(
        "negative weight decay",
        "fit",
        fit("--model.optimizer.init_args.weight_decay=-1"),
        r"init_args\.weight_decay: SGD refuses",
    ),
    Case("negative momentum", "fit", fit("--model.optimizer.init_args.momentum=-1"), r"init_args\.momentum: SGD"),
    Case("NaN learning rate", "fit", fit("--model.optimizer.init_args.lr=.nan"), r"init_args\.lr is nan"),
    # --- the trainer and its checkpoint callbacks ------------------------------------------------
    Case("max_epochs below -1", "fit", fit("--trainer.max_epochs=-2"), r"trainer\.max_epochs is -2.*-1 for no limit"),
    Case("accumulation over 0 batches", "fit", fit("--trainer.accumulate_grad_batches=0"), r"accumulate_grad_batches"),
    Case("negative clip value", "fit", fit("--trainer.gradient_clip_val=-1"), r"trainer\.gradient_clip_val is -1"),
    Case("infinite clip value", "fit", fit("--trainer.gradient_clip_val=.inf"), r"gradient_clip_val is inf"),
    Case("fraction of batches above 1", "fit", fit("--trainer.limit_val_batches=1.5"), r"limit_val_batches is 1\.5"),
    Case("time limit that is no duration", "fit", fit("--trainer.max_time=abc"), r"trainer\.max_time .*DD:HH:MM:SS"),
    Case(
        "more epochs at least than at most",
        "fit",
        fit("--trainer.min_epochs=5", "--trainer.max_epochs=2"),
        r"trainer\.min_epochs is 5, above trainer\.max_epochs",
    ),
    Case("checkpoint count below -1", "fit", fit("--checkpoint.save_top_k=-3"), r"checkpoint\.save_top_k is -3"),
    Case(
        "validation interval beyond the epoch",
        "fit",
        fit("--trainer.val_check_interval=100000"),
        r"Lightning refuses the config \(`val_check_interval` \(100000\) must be less than",
    ),
    # --- the data module and the model ------------------------------------------------------------
    Case(
        "longest edge below the shortest",
        "fit",
        fit("--data.max_size_train=100"),
        r"data\.max_size_train is 100, below data\.min_size_train's 128",
    ),
    Case("image size over the limit", "fit", fit("--data.min_size_test=60000"), r"min_size_test is 60000, more than"),
    Case("negative data seed", "fit", fit("--data.seed=-1"), r"data\.seed is -1"),
    Case("unknown channel order", "fit", fit("--data.image_format=XYZ"), r"data\.image_format is 'XYZ'"),
    Case("negative warm-up", "fit", fit("--model.warmup_steps=-1"), r"model\.warmup_steps is -1"),
    Case("decay factor of 0", "fit", fit("--model.lr_gamma=0"), r"model\.lr_gamma is 0"),
    Case("milestone beyond the run", "fit", fit("--model.lr_milestones=[1.5]"), r"model\.lr_milestones holds 1\.5"),
    Case(
        "checkpoint with an image size over the limit",
        "predict",
        args("--ckpt", "{root}/options/huge-size.ckpt", "{sample}/val", "--out", "{root}/p-opt"),
        r"model\.min_size_test is 60000, more than 4096 pixels",
    ),
    Case(
        "checkpoint with a billion classes",
        "export",
        args("--ckpt", "{root}/options/many-classes.ckpt", "--format", "onnx", "--out", "{root}/x-opt"),
        r"model\.num_classes is 1000000000",
    ),
    Case(
        "checkpoint whose overrides make a layer enormous",
        "evaluate",
        args(
            "--ckpt",
            "{root}/options/trillion-parameters.ckpt",
            "--json",
            "{sample}/val.json",
            "--images",
            "{sample}/val",
            "--out",
            "{root}/e-opt",
        ),
        r"makes a model of [\d,]+ parameters \([\d,]+ GiB of float32 weights\), more than the 2,000,000,000",
    ),
    Case(
        "overrides that make a layer enormous",
        "fit",
        fit('--model.overrides={{"MODEL.ROI_BOX_HEAD.FC_DIM": 1000000}}'),
        r"makes a model of [\d,]+ parameters",
    ),
    # --- command options ----------------------------------------------------------------------------
    Case(
        "NaN IoU threshold",
        "evaluate",
        args("--results", "{root}/nan-results.json", "--json", "{sample}/val.json", "--iou-threshold", "nan"),
        r"--iou-threshold: nan is not between 0 and 1",
    ),
    Case("tune with a NaN timeout", "tune", args(*SEARCH, "--timeout", "nan"), r"--timeout: nan is not a time"),
    Case(
        "split with a negative seed",
        "split",
        args("{sample}/train.json", "--images", "{sample}/train", "--out", "{root}/s-opt", "--seed", "-1"),
        r"--seed: -1 is below 0",
    ),
    Case(
        "tile with a tile size below the smallest tile",
        "tile",
        args("--json", "{sample}/train.json", "--images", "{sample}/train", "--out", "{root}/t-opt", "--size", "8"),
        r"--size: 8 is below the smallest tile; give 32 or more",
    ),
    Case(
        "predict with a slice below the smallest tile",
        "predict",
        args("--ckpt", "{ckpt}", "{sample}/val", "--out", "{root}/p-slice", "--slice", "8"),
        r"argument --slice: 8 is below the smallest tile; give 32 or more",
    ),
    Case(
        "evaluate a results file with sliced inference",
        "evaluate",
        args(
            "--results", "{sample}/val.json", "--json", "{sample}/val.json", "--out", "{root}/e-slice", "--slice", "640"
        ),
        r"--slice runs a model on tiles: give --ckpt or --model \(a results file holds detections\)",
    ),
    Case(
        "serve with a slice overlap above 0.9",
        "serve",
        args("--ckpt", "{ckpt}", "--slice", "640", "--slice-overlap", "0.95"),
        r"argument --slice-overlap: 0\.95 is above 0\.9; 0\.2 is usual",
    ),
    Case("browse with a huge grid cell", "browse", args("--config", "x.yaml", "--cell", "100000"), r"--cell: 100000"),
    Case(
        "predict with a huge batch",
        "predict",
        args("--ckpt", "{ckpt}", "{sample}/val", "--batch-size", "99999"),
        "1024",
    ),
    # --- tune --storage -----------------------------------------------------------------------------
    Case("tune storage that is not a URL", "tune", args(*SEARCH, "--storage", "{root}/study.db"), "not a database URL"),
    Case(
        "tune storage of an unknown database",
        "tune",
        args(*SEARCH, "--storage", "nosuchdb://localhost/study"),
        "knows no database 'nosuchdb'",
    ),
    Case(
        "tune storage without its driver",
        "tune",
        args(*SEARCH, "--storage", "mssql+pymssql://user@localhost/study"),
        "needs the Python driver pymssql",
    ),
    Case(
        "tune storage that is not a database",
        "tune",
        args(*SEARCH, "--storage", "sqlite:///{root}/a-file"),
        "is not an SQLite database",
    ),
    Case("tune storage in memory", "tune", args(*SEARCH, "--storage", "sqlite://"), "database in memory"),
    # --- paths and names ----------------------------------------------------------------------------
    Case(
        "json that is a named pipe",
        "check",
        args("{root}/options/fifo.json", "--images", "{sample}/train"),
        r"fifo\.json is a named pipe \(FIFO\), not a regular file",
    ),
    Case("json that is a device", "check", args("/dev/zero", "--images", "{sample}/train"), "is a character device"),
    Case("checkpoint that is a named pipe", "fit", fit("--ckpt={root}/options/fifo.ckpt"), "--ckpt .* is a named pipe"),
    Case("fit config that is a named pipe", "fit", fit("--config={root}/options/fifo.yaml"), "--config .* named pipe"),
    Case(
        "output name too long",
        "check",
        args("{sample}/train.json", "--images", "{sample}/train", "--fix", "{root}/new/" + LONG + ".json"),
        r"--fix: the name n+\.\.\.n+\.json \(305 bytes\) in .* is longer than the filesystem allows",
    ),
    Case(
        "run folder name too long",
        "fit",
        fit("--trainer.logger.init_args.save_dir={root}/new/" + LONG),
        r"cannot write the run folder: the name n+\.\.\.n+ \(300 bytes\)",
    ),
    # --- audit ----------------------------------------------------------------------------------------
    Case(
        "audit with both folds and a checkpoint",
        "audit",
        args(*AUDIT, "{root}/au1", "--ckpt", "{ckpt}", "--fold", "{ckpt}", "{sample}/val.json"),
        r"give the models that audit: --fold CKPT VAL_JSON once per fold, or --ckpt CKPT, not both",
    ),
    Case("audit without a model", "audit", args(*AUDIT, "{root}/au2"), r"give the models that audit"),
    Case(
        "audit gallery of no rows",
        "audit",
        args(*AUDIT, "{root}/au3", "--ckpt", "{ckpt}", "--top", "0"),
        "0 is below 1",
    ),
    Case(
        "audit with a fold of another json",
        "audit",
        args(*AUDIT, "{root}/au4", "--fold", "{ckpt}", "{sample}/train.json"),
        r"--fold .*train\.json lists image 'train_0000\.jpg', which .*val\.json does not; pass the val\.json files",
    ),
    Case(
        "audit apply without the corrected copy",
        "audit",
        args("--apply", "{root}/options/other.csv", "--json", "{sample}/val.json"),
        r"--apply needs --fix FIXED\.json",
    ),
    Case(
        "audit apply of a CSV of another json",
        "audit",
        args("--apply", "{root}/options/other.csv", "--json", "{sample}/val.json", "--fix", "{root}/au5/fixed.json"),
        r"other\.csv, line 2: image 999 is not in .*val\.json; apply the CSV to the json it was written from",
    ),
    Case(
        "audit apply of a file that is no audit CSV",
        "audit",
        args("--apply", "{root}/search.yaml", "--json", "{sample}/val.json", "--fix", "{root}/au6/fixed.json"),
        r"search\.yaml is not a mistakes\.csv of python -m detlit\.audit: column\(s\) image_id, .* missing",
    ),
    Case(
        "argument with bytes that are not UTF-8",
        "check",
        args("{root}/caf\udce9.json", "--images", "{sample}/train"),
        r"caf\\xe9\.json holds bytes that are not UTF-8",
    ),
]


def prepare(workspace: Workspace) -> None:
    """Named pipes where a json, a checkpoint and a config are expected; checkpoints whose
    hyper-parameters ask for images of 60000 pixels and for a billion classes."""
    folder = workspace.root / "options"
    folder.mkdir()
    for name in ("fifo.json", "fifo.ckpt", "fifo.yaml"):
        os.mkfifo(folder / name)
    checkpoint = torch.load(workspace.ckpt, map_location="cpu", weights_only=True)
    hparams = checkpoint["hyper_parameters"]
    torch.save({**checkpoint, "hyper_parameters": {**hparams, "min_size_test": 60000}}, folder / "huge-size.ckpt")
    many = {**hparams, "num_classes": 10**9, "class_names": None, "category_ids": None}
    torch.save({**checkpoint, "hyper_parameters": many}, folder / "many-classes.ckpt")
    wide = {**hparams, "overrides": {**hparams["overrides"], "MODEL.ROI_BOX_HEAD.FC_DIM": 10**6}}
    torch.save({**checkpoint, "hyper_parameters": wide}, folder / "trillion-parameters.ckpt")
    header = "rank,image_id,file_name,annotation_id,kind,suggested_category_id,suggested_class,"
    header += "suggested_x,suggested_y,suggested_w,suggested_h,accept\n"
    (folder / "other.csv").write_text(header + "1,999,x.jpg,5,spurious,,,,,,,yes\n")
