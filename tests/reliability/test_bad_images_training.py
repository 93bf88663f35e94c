"""Training on an image folder full of bad files: the run goes on, and the images skipped or
converted are reported at each epoch end (log line and TensorBoard), summed over ranks.

A missing or empty dataset folder fails before training, naming the path.
"""

from __future__ import annotations

import os
import re

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ijepa_ds.config import ConfigError, load_config
from ijepa_ds.data.image_folder import COUNTERS, ImageFolder
from ijepa_ds.train.args import TrainArgs
from ijepa_ds.train.main import prepare
from ijepa_ds.train.trainer import build_train_dataset
from tests.data.test_image_folder import write_good_tree, write_odd_images
from tests.reliability.fault_worker import BASE
from tests.reliability.faults import run_worker

# 21 good PNGs + the 11 awkward files of the data tests = 32 images = 2 steps of 16: every
# image is read exactly once per epoch.
PER_CLASS = 7


def _expected_epoch_counts(train_root: str, outcome_of: dict[str, str]) -> dict[str, int]:
    """Counter values after reading every index once (a bad slot goes to the next readable
    file in index order, wrapping; each bad file passed on the way counts)."""
    ds = ImageFolder(train_root)
    outcome = [outcome_of.get(os.path.basename(ds.path_of(i)), "ok") for i in range(len(ds))]
    counts = dict.fromkeys(COUNTERS, 0)
    for i in range(len(ds)):
        j = i
        while outcome[j % len(ds)].startswith("skipped"):
            counts[outcome[j % len(ds)]] += 1
            j += 1
        counts["converted"] += outcome[j % len(ds)] == "converted"
    counts["skipped"] = sum(v for k, v in counts.items() if k.startswith("skipped_"))
    return counts


@pytest.mark.slow
@pytest.mark.distributed
def test_training_goes_on_and_reports_bad_images_per_epoch(tmp_path):
    train = tmp_path / "images" / "train"
    write_good_tree(str(train), per_class=PER_CLASS)
    expected = _expected_epoch_counts(str(train), write_odd_images(str(train / "mixed")))
    assert expected["skipped"] >= 4 and expected["converted"] >= 5
    overrides = (
        "data.dataset=image_folder", f"data.root={tmp_path / 'images'}", "schedule.max_steps=4",
        "logging.tensorboard=true", "checkpoint.every_steps=0", "checkpoint.save_at_end=false",
    )  # fmt: skip
    job = run_worker(tmp_path, "images", "images", overrides=overrides)
    assert job.returncode == 0, job.describe()
    assert len(job.ranks[0]["losses"]) == 4
    lines = re.findall(r"data, epoch (\d) \(to step (\d)\): (\d+) unreadable images skipped "
                       r"\((.*)\), (\d+) converted", job.stdout)  # fmt: skip
    reasons = f"corrupt {expected['skipped_corrupt']}, empty_file "
    reasons += f"{expected['skipped_empty_file']}, not_an_image {expected['skipped_not_an_image']}"
    per_epoch = (str(expected["skipped"]), reasons, str(expected["converted"]))
    assert lines == [("0", "2", *per_epoch), ("1", "4", *per_epoch)], job.stdout[-3000:]
    events = EventAccumulator(str(tmp_path / "runs" / "images" / "tensorboard"))
    events.Reload()
    for name, count in expected.items():
        values = [(e.step, e.value) for e in events.Scalars(f"data/{name}")]
        assert values == [(2, count), (4, count)], name


def _prepare(*overrides: str):
    return prepare(TrainArgs("fmnist_tiny", (*BASE, *overrides)))


def test_missing_dataset_folder_fails_up_front(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(ConfigError, match=re.escape(f"dataset folder {missing} does not exist")):
        _prepare("data.dataset=image_folder", f"data.root={missing}")


def test_empty_dataset_folder_fails_before_training(tmp_path):
    (tmp_path / "train").mkdir()
    cfg = load_config("fmnist_tiny", BASE + ["data.dataset=image_folder", f"data.root={tmp_path}"])
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "train")) + ".*no class"):
        build_train_dataset(cfg)  # the first thing build_trainer does, on every rank
