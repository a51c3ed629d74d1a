"""Stage 5, loading: training order, aspect-ratio batches, repeat factors and sharding over processes."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from lightning.pytorch import Trainer
from lightning.pytorch.trainer.states import RunningStage
from torch.utils.data import DataLoader, SequentialSampler

from detlit.data.coco import Annotation, ImageRecord
from detlit.data.datamodule import CocoDataModule
from detlit.data.samplers import (
    BatchDataset,
    EvaluationBatchSampler,
    TrainingBatchSampler,
    orientation_groups,
    repeat_factors,
)

from .conftest import tiny_datamodule


def _records(sizes: list[tuple[int, int]], categories: list[list[int]] | None = None) -> list[ImageRecord]:
    """Image records of the given (width, height), with one box per listed category."""
    categories = categories or [[] for _ in sizes]
    return [
        ImageRecord(
            id=i,
            file_name=f"{i}.jpg",
            width=w,
            height=h,
            annotations=[
                Annotation(id=i * 10 + k, image_id=i, category_id=c, bbox=(0, 0, 5, 5), area=25.0)
                for k, c in enumerate(cats)
            ],
        )
        for i, ((w, h), cats) in enumerate(zip(sizes, categories, strict=True))
    ]


# 13 landscape or square images, 9 portrait ones, interleaved.
SIZES = [(640, 480) if i % 5 < 3 else (480, 640) for i in range(20)] + [(500, 500), (480, 640)]
GROUPS = orientation_groups(_records(SIZES))


def _flat(batches: list[list[int]]) -> list[int]:
    return [index for batch in batches for index in batch]


def test_orientation_groups() -> None:
    assert orientation_groups(_records([(640, 480), (480, 640), (500, 500), (0, 0)])) == [0, 1, 0, 0]
    assert (GROUPS.count(0), GROUPS.count(1)) == (13, 9)


@pytest.mark.parametrize("epoch", [0, 1, 7])
def test_aspect_ratio_batches_are_homogeneous_and_cover_every_image_once(epoch: int) -> None:
    sampler = TrainingBatchSampler(range(22), batch_size=4, groups=GROUPS, seed=3)
    sampler.set_epoch(epoch)
    batches = list(sampler)
    assert all(len({GROUPS[i] for i in batch}) == 1 for batch in batches)
    assert sorted(_flat(batches)) == list(range(22))
    # ceil(13 / 4) + ceil(9 / 4): one smaller batch per group, at the end
    assert len(batches) == len(sampler) == 4 + 3
    assert sorted(len(b) for b in batches) == [1, 1, 4, 4, 4, 4, 4]
    assert [len(b) for b in batches[-2:]] == [1, 1]


def test_drop_last_keeps_only_full_batches() -> None:
    sampler = TrainingBatchSampler(range(22), batch_size=4, groups=GROUPS, drop_last=True)
    batches = list(sampler)
    assert [len(b) for b in batches] == [4] * 5 and len(sampler) == 5
    assert all(len({GROUPS[i] for i in batch}) == 1 for batch in batches)


def test_drop_last_never_leaves_an_empty_epoch() -> None:
    sampler = TrainingBatchSampler(range(3), batch_size=4, drop_last=True)
    assert [len(b) for b in sampler] == [3]  # no full batch: the smaller one stays
    two = [TrainingBatchSampler(range(6), batch_size=4, num_replicas=2, rank=r, drop_last=True) for r in (0, 1)]
    assert [len(s) for s in two] == [1, 1]  # one full batch for two processes: both train on one


def test_order_depends_on_seed_and_epoch_only() -> None:
    def batches(seed: int, epoch: int) -> list[list[int]]:
        sampler = TrainingBatchSampler(range(22), batch_size=4, groups=GROUPS, seed=seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert batches(0, 2) == batches(0, 2)
    assert batches(0, 2) != batches(0, 3)
    assert batches(0, 2) != batches(1, 2)
    assert sorted(_flat(batches(0, 3))) == sorted(_flat(batches(1, 2))) == list(range(22))


def test_without_grouping_batches_follow_the_shuffled_order() -> None:
    sampler = TrainingBatchSampler(range(10), batch_size=4)
    batches = list(sampler)
    assert [len(b) for b in batches] == [4, 4, 2]
    assert sorted(_flat(batches)) == list(range(10))
    assert _flat(batches) != list(range(10))


def test_repeat_factors_follow_category_frequency() -> None:
    # Category 1 is in 1 of 100 images (f = 0.01), category 2 in 98 (f = 0.98), category 3 only
    # in a crowd region, which is not an object.
    records = _records([(10, 10)] * 100, [[1, 2], *[[2]] * 97, [], [3]])
    records[-1].annotations[0] = Annotation(
        id=999, image_id=99, category_id=3, bbox=(0, 0, 5, 5), area=25.0, iscrowd=True
    )
    factors = repeat_factors(records, threshold=0.0625)
    assert factors[0] == pytest.approx(math.sqrt(0.0625 / 0.01))  # 2.5
    assert factors[1:98] == [1.0] * 97  # sqrt(0.0625 / 0.98) < 1
    assert factors[98:] == [1.0, 1.0]  # no object; only a crowd region
    assert repeat_factors(records, threshold=0.001) == [1.0] * 100


def test_repeat_factor_sampling_shows_rare_images_more_often() -> None:
    factors = [2.5, 1.0, 1.0, 1.7] + [1.0] * 8
    sampler = TrainingBatchSampler(range(12), batch_size=2, repeat_factors=factors, seed=5)
    counts: dict[int, list[int]] = {i: [] for i in range(12)}
    orders = set()
    for epoch in range(400):
        sampler.set_epoch(epoch)
        seen = Counter(_flat(list(sampler)))
        orders.add(tuple(_flat(list(sampler))))
        for i in range(12):
            counts[i].append(seen[i])
    assert set(counts[0]) == {2, 3} and sum(counts[0]) / 400 == pytest.approx(2.5, abs=0.1)
    assert set(counts[3]) == {1, 2} and sum(counts[3]) / 400 == pytest.approx(1.7, abs=0.1)
    assert all(set(counts[i]) == {1} for i in range(4, 12))  # frequent-only images exactly once
    assert len(orders) == 400


def test_training_shards_are_disjoint_but_for_padding_and_equally_long() -> None:
    whole = TrainingBatchSampler(range(22), batch_size=4, groups=GROUPS, seed=1)
    ranks = [
        TrainingBatchSampler(range(22), batch_size=4, groups=GROUPS, seed=1, num_replicas=2, rank=r) for r in (0, 1)
    ]
    for epoch in (0, 1):
        for sampler in (whole, *ranks):
            sampler.set_epoch(epoch)
        batches = list(whole)  # the same shuffle, before dealing out
        assert len(batches) == 7  # odd: one batch must be repeated so both ranks run 4 steps
        shards = [list(sampler) for sampler in ranks]
        assert [len(s) for s in shards] == [len(s) for s in ranks] == [4, 4]
        assert shards[0] == batches[0::2] and shards[1] == batches[1::2] + batches[:1]
        assert set(_flat(shards[0])) & set(_flat(shards[1])) == set(batches[0])
        assert sorted(set(_flat(shards[0])) | set(_flat(shards[1]))) == list(range(22))
        assert all(len({GROUPS[i] for i in batch}) == 1 for batch in shards[0] + shards[1])


def test_training_shards_with_repeats_and_more_ranks_than_batches() -> None:
    ranks = [
        TrainingBatchSampler(range(3), batch_size=2, repeat_factors=[2.0, 1.0, 1.0], num_replicas=4, rank=r)
        for r in range(4)
    ]
    shards = [list(sampler) for sampler in ranks]
    assert [len(s) for s in shards] == [1, 1, 1, 1]
    assert Counter(_flat(shards[0] + shards[1])) == Counter({0: 2, 1: 1, 2: 1})  # the real batches
    assert shards[2:] == shards[:2]  # padding repeats them


def test_evaluation_shards_cover_every_image_exactly_once_in_batches_of_one_shape() -> None:
    shapes = [(10, 20), (20, 10), (10, 20), (10, 20), (20, 10), (10, 20), (15, 15)]
    for world in (1, 2, 3):
        shards = [list(EvaluationBatchSampler(shapes, 2, num_replicas=world, rank=r)) for r in range(world)]
        flat = [i for shard in shards for batch in shard for i in batch]
        assert sorted(flat) == list(range(7))  # every image once, no padding
        for shard in shards:
            for batch in shard:
                assert 1 <= len(batch) <= 2 and len({shapes[i] for i in batch}) == 1
    assert list(EvaluationBatchSampler(shapes, 3)) == [[0, 2, 3], [5], [1, 4], [6]]


def test_batch_dataset_fetches_a_batch_per_index_list() -> None:
    batches = BatchDataset(["a", "b", "c"])
    assert batches[[2, 0]] == ["c", "a"] and len(batches) == 3


def _datamodule(sample_dir: Path, **kwargs: Any) -> CocoDataModule:
    dm = CocoDataModule(
        train_json=str(sample_dir / "train.json"),
        train_images=str(sample_dir / "train"),
        val_json=str(sample_dir / "val.json"),
        val_images=str(sample_dir / "val"),
        min_size_train=[64],
        max_size_train=96,
        min_size_test=64,
        max_size_test=96,
        num_workers=0,
        batch_size=2,
        **kwargs,
    )
    dm.setup("fit")
    return dm


def _fake_trainer(world_size: int, rank: int, epoch: int = 0) -> Any:
    progress = SimpleNamespace(current=SimpleNamespace(processed=epoch))
    return SimpleNamespace(
        world_size=world_size, global_rank=rank, overfit_batches=0, fit_loop=SimpleNamespace(epoch_progress=progress)
    )


def test_single_process_training_loader_serves_every_image_once_in_batches(sample_dir: Path) -> None:
    dm = _datamodule(sample_dir, drop_last=False)
    loader = dm.train_dataloader()
    records = dm.datasets["train"].records
    sizes = {r.id: (r.width >= r.height) for r in records}
    seen = []
    for batch in loader:
        assert isinstance(batch, list) and 1 <= len(batch) <= 2
        assert len({sizes[item["image_id"]] for item in batch}) == 1
        assert all(isinstance(item["boxes_dropped"], int) for item in batch)
        seen += [item["image_id"] for item in batch]
    assert sorted(seen) == sorted(r.id for r in records)
    assert len(loader) == len(loader.sampler)
    assert isinstance(dm.val_dataloader().sampler, EvaluationBatchSampler)


def test_datamodule_settings_reach_the_samplers(sample_dir: Path) -> None:
    dm = _datamodule(sample_dir, group_by_aspect_ratio=False, seed=4)
    sampler = dm.train_dataloader().sampler
    assert isinstance(sampler, TrainingBatchSampler)
    assert sampler.groups is None and sampler.repeat_factors is None and sampler.seed == 4
    dm = _datamodule(sample_dir, repeat_factor_threshold=0.9)
    sampler = dm.train_dataloader().sampler
    assert sampler.groups == orientation_groups(dm.datasets["train"].records)
    expected = repeat_factors(dm.datasets["train"].records, 0.9)
    assert max(expected) > 1 and sampler.repeat_factors.tolist() == expected
    with pytest.raises(ValueError, match="data.repeat_factor_threshold is 0; use a fraction"):
        _datamodule(sample_dir, repeat_factor_threshold=0)


def test_loaders_of_two_processes_split_the_data(sample_dir: Path) -> None:
    loaders = {}
    for rank in (0, 1):
        dm = _datamodule(sample_dir)
        dm.trainer = _fake_trainer(2, rank, epoch=3)
        loaders[rank] = (dm.train_dataloader(), dm.val_dataloader())
    train = [loader.sampler for loader, _ in loaders.values()]
    assert [(s.num_replicas, s.rank, s.epoch) for s in train] == [(2, 0, 3), (2, 1, 3)]
    assert len(loaders[0][0]) == len(loaders[1][0])
    val = [[item["image_id"] for batch in loader for item in batch] for _, loader in loaders.values()]
    assert not set(val[0]) & set(val[1])
    assert sorted(val[0] + val[1]) == sorted(r.id for r in dm.val_data.images)
    assert (len(val[0]), len(val[1])) == (3, 3)


def test_lightning_keeps_these_samplers_under_ddp(sample_dir: Path) -> None:
    # Built, not launched: enough for Lightning to decide whether to replace the samplers.
    trainer = Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_progress_bar=False)
    dm = _datamodule(sample_dir)
    dm.trainer = trainer
    connector = trainer._data_connector
    train, val = dm.train_dataloader(), dm.val_dataloader()
    assert isinstance(train.sampler, TrainingBatchSampler) and train.sampler.num_replicas == 2
    assert connector._prepare_dataloader(train, shuffle=True, mode=RunningStage.TRAINING) is train
    assert connector._prepare_dataloader(val, shuffle=False, mode=RunningStage.VALIDATING) is val
    plain = DataLoader(dm.datasets["train"], batch_size=2)
    assert connector._prepare_dataloader(plain, shuffle=True, mode=RunningStage.TRAINING) is not plain


def test_overfitting_gets_an_ordinary_sequential_loader(sample_dir: Path) -> None:
    dm = _datamodule(sample_dir)
    dm.trainer = SimpleNamespace(overfit_batches=1)
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, SequentialSampler) and loader.batch_size == 2
    assert [item["image_id"] for item in next(iter(loader))] == [r.id for r in dm.datasets["train"].records[:2]]


def test_the_data_module_trains_on_full_batches_with_drop_last(sample_dir: Path) -> None:
    sizes = {}
    for drop in (False, True):
        dm = tiny_datamodule(sample_dir, batch_size=5, drop_last=drop)
        dm.setup("fit")
        sizes[drop] = [len(batch) for batch in dm.train_dataloader()]
    assert sum(sizes[False]) == 12 and min(sizes[False]) < 5  # every image, in some smaller batches
    assert sizes[True] and set(sizes[True]) == {5}
    assert tiny_datamodule(sample_dir).hparams["drop_last"], "full batches only, unless asked otherwise"
