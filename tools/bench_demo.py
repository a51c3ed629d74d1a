"""The demo's training time, old config against new, measured in one run and carried to another machine.

``python tools/bench_demo.py`` measures, for ``--old`` (``configs/sample_cpu.yaml``) and ``--new``
(``configs/demo.yaml``), on the synthetic sample (``python -m detlit.sample``: 200 train, 40 val):

* seconds per training step: Lightning's ``Trainer`` on the same prepared batches of each config
  (``tools/bench.py``'s ``train_step`` set-up), the two configs in turns (ABBA), after warm-up;
* seconds per validation: ``Trainer.validate`` over the 40 validation images;

in CPU seconds of this process (every thread's; a machine shared with other jobs changes them
little) and in wall-clock seconds,

and the schedule each config runs (steps = epochs x batches per epoch, validations = epochs /
``check_val_every_n_epoch``). A training of the old config took ``--old-seconds`` (1300: 10 epochs
of about 130 s) on the slower 2-core machine kind (AMD EPYC with AVX2 only); the new config's
training there is estimated as that time x (new training here / old training here).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import yaml

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
from bench import Spec, TrainSetup, step_seconds  # noqa: E402
from bench_architectures import Clock  # noqa: E402
from benchkit import FULL, REPO, abba, collected, machine, quiet, set_threads, usable_cores  # noqa: E402
from lightning.pytorch import Trainer  # noqa: E402

from detlit.data.datamodule import CocoDataModule  # noqa: E402
from detlit.data.sample import write_sample  # noqa: E402


def schedule(config: Path, dm: CocoDataModule) -> tuple[int, int]:
    """(training steps, validations) of a config's run on the data module's training images."""
    trainer_args = yaml.safe_load(config.read_text()).get("trainer", {})
    epochs = int(trainer_args.get("max_epochs", 1000))
    every = int(trainer_args.get("check_val_every_n_epoch", 1))
    dm.setup("fit")
    batches = len(CocoDataModule.train_dataloader(dm))
    return epochs * batches, epochs // every


def step_times(setup: TrainSetup, steps: int) -> tuple[float, float]:
    """Mean (CPU, wall) seconds per training step of one fit, after 2 warm-up steps."""
    clock = Clock()
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=2 + steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[clock],
    )
    trainer.fit(setup.module, datamodule=setup.dm)
    return statistics.mean(step_seconds(clock.cpu, 2)), statistics.mean(step_seconds(clock.wall, 2))


def validation_seconds(setup: TrainSetup, folder: Path) -> tuple[float, float]:
    dm = CocoDataModule(
        train_json=str(folder / "train.json"),
        train_images=str(folder / "train"),
        val_json=str(folder / "val.json"),
        val_images=str(folder / "val"),
        batch_size=setup.spec.batch_size,
        num_workers=0,
        min_size_train=setup.spec.min_size_train,
        max_size_train=setup.spec.max_size_train,
        min_size_test=setup.spec.min_size_test,
        max_size_test=setup.spec.max_size_test,
    )
    trainer = Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False)
    begun, begun_cpu = time.perf_counter(), time.process_time()
    trainer.validate(setup.module, datamodule=dm, verbose=False)
    return time.process_time() - begun_cpu, time.perf_counter() - begun


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--old", type=Path, default=REPO / "configs" / "sample_cpu.yaml")
    parser.add_argument("--new", type=Path, default=REPO / "configs" / "demo.yaml")
    parser.add_argument("--old-seconds", type=float, default=1300.0, help="the old training on the slow machine")
    parser.add_argument("--turns", type=int, default=4, help="turns per config")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per turn (after 2 warm-up steps)")
    parser.add_argument("--threads", type=int, default=usable_cores(), help="torch threads")
    args = parser.parse_args(argv)
    quiet()
    set_threads(args.threads)
    scale = replace(FULL, train_warmup=2, train_steps=args.steps)
    configs = {"old": args.old, "new": args.new}
    with tempfile.TemporaryDirectory(prefix="detlit-demo-") as tmp:
        folder = Path(tmp)
        write_sample(folder, train=200, val=40, seed=0)
        setups = {k: TrainSetup.build(Spec.read(p), folder, scale, "cpu", "32-true") for k, p in configs.items()}
        plans = {k: schedule(configs[k], setup.dm) for k, setup in setups.items()}
        steps: dict[str, list[tuple[float, float]]] = {k: [] for k in configs}
        for side in abba(range(args.turns), list(configs)):
            collected()
            steps[side].append(step_times(setups[side], args.steps))
            print(f"{side}: {steps[side][-1][0]:.3f} CPU s/step", file=sys.stderr, flush=True)
        validation = {k: validation_seconds(setup, folder) for k, setup in setups.items()}
    lines = [f"machine: {machine()['cpu']}, {args.threads} torch threads"]
    training: dict[str, list[float]] = {}
    for k, path in configs.items():
        cpu, wall = (statistics.median(s[i] for s in steps[k]) for i in (0, 1))
        count, validations = plans[k]
        training[k] = [count * cpu + validations * validation[k][0], count * wall + validations * validation[k][1]]
        lines.append(
            f"{k} ({path.relative_to(REPO) if path.is_relative_to(REPO) else path}): {cpu:.3f} CPU s/step "
            f"(wall {wall:.3f}; turns {', '.join(f'{s[0]:.3f}' for s in steps[k])}), {validation[k][0]:.1f} CPU s "
            f"per validation (wall {validation[k][1]:.1f}); {count} steps and {validations} validations = "
            f"{training[k][0]:.0f} CPU s of training here (wall {training[k][1]:.0f})"
        )
    ratio = training["new"][0] / training["old"][0]
    lines.append(
        f"new / old (CPU seconds): {ratio:.3f}; on the slow machine kind: {args.old_seconds:.0f} s x {ratio:.3f} = "
        f"{args.old_seconds * ratio:.0f} s of training"
    )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
