"""Injected faults: a data load that dies half-way (exception, Ctrl-C, SIGKILL, failed swap) never
leaves a dataset that downstream accepts, and pickled checkpoints / weights are refused without
running a single byte of their payload."""

from __future__ import annotations

import pathlib
import pickle
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.conftest import write_synthetic_tree, zip_tree
from tests.reliability.support import child_env, kill_group, run, tree_hashes, wait_for, write_big_archive

# ---------------------------------------------------------------- interrupted data loads


@pytest.fixture
def small_zip(tmp_path: Path) -> Path:
    write_synthetic_tree(tmp_path / "small", per_class=2)
    return zip_tree(tmp_path / "small", tmp_path / "small.zip")


def staging_leftovers(out: Path) -> list[Path]:
    return sorted(out.parent.glob(f".{out.name}.staging-*"))


def assert_never_accepted(folder: Path, manifest: Path) -> None:
    """The split stage refuses ``folder`` (no dataset.json) and writes no manifest."""
    from mtdefect.data.source import DataSourceError
    from mtdefect.data.split import make_split

    assert not (folder / "dataset.json").exists()
    with pytest.raises(DataSourceError, match="not a complete dataset"):
        make_split(folder, manifest)
    assert not manifest.exists()


class Boom(Exception):
    pass


@pytest.mark.parametrize(
    "fault",
    [OSError("No space left on device"), KeyboardInterrupt(), Boom("crash")],
    ids=["disk-full", "ctrl-c", "crash"],
)
@pytest.mark.parametrize("previous", [False, True], ids=["fresh", "over-previous"])
def test_load_failing_midway_keeps_nothing_or_the_previous_dataset(
    small_zip: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: BaseException, previous: bool
) -> None:
    from mtdefect.data import source

    out = tmp_path / "data" / "tiles"
    if previous:
        source.load_dataset(str(small_zip), out)
    before = tree_hashes(out) if previous else None
    big = write_big_archive(tmp_path / "big.zip", pairs_per_class=3, size=(64, 48))
    real_binarize, calls = source.binarize_mask, []

    def failing_binarize(*args, **kwargs):
        calls.append(1)
        if len(calls) == 7:  # 6 pairs already written to the staging folder
            raise fault
        return real_binarize(*args, **kwargs)

    monkeypatch.setattr(source, "binarize_mask", failing_binarize)
    with pytest.raises(type(fault)):
        source.load_dataset(str(big), out)
    assert len(calls) == 7
    assert staging_leftovers(out) == [], "a staging folder survived the failure"
    if previous:
        assert tree_hashes(out) == before, "the previous dataset was touched"
    else:
        assert not out.exists()
        assert_never_accepted(out, tmp_path / "split.csv")


def test_failed_swap_never_leaves_a_mixed_dataset(
    small_zip: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The staging folder is complete but renaming it into place fails (the last step)."""
    from mtdefect.data import source

    out = tmp_path / "data" / "tiles"
    source.load_dataset(str(small_zip), out)
    before = tree_hashes(out)
    real_rename = pathlib.Path.rename

    def rename(self, target):
        if self.name.startswith(".tiles.staging-"):
            raise OSError("rename failed")
        return real_rename(self, target)

    monkeypatch.setattr(pathlib.Path, "rename", rename)
    with pytest.raises(OSError, match="rename failed"):
        source.load_dataset(str(write_big_archive(tmp_path / "big.zip", 2, (64, 48))), out)
    monkeypatch.undo()
    assert staging_leftovers(out) == []
    if out.exists():
        assert tree_hashes(out) == before
    else:  # the previous dataset was moved aside first; downstream must not accept anything
        assert_never_accepted(out, tmp_path / "split.csv")
        kept = list(out.parent.glob(".tiles.old-*"))
        assert len(kept) == 1 and tree_hashes(kept[0]) == before, "the previous dataset was lost"


@pytest.mark.slow
@pytest.mark.parametrize("previous", [False, True], ids=["fresh", "over-previous"])
def test_sigkill_of_load_data_stage_mid_write(small_zip: Path, tmp_path: Path, previous: bool) -> None:
    """SIGKILL the real stage process while it writes: no cleanup code runs, yet nothing half-written
    is ever taken for a dataset, and a rerun produces the complete one."""
    from mtdefect.data.source import load_dataset, read_summary

    work = tmp_path / "project"
    out = work / "data" / "tiles"
    big = write_big_archive(tmp_path / "big.zip", pairs_per_class=60)
    if previous:
        load_dataset(str(small_zip), out)
    before = tree_hashes(out) if previous else None
    work.mkdir(exist_ok=True)
    (work / "params.yaml").write_text(
        f"data:\n  source: {big}\n  sha256: null\n"
        "  split: {val_fraction: 0.15, test_fraction: 0.15, seed: 42, max_per_class: null}\n"
        "paths:\n  data_dir: data/tiles\n  manifest: data/split.csv\n"
    )

    def half_written() -> bool:
        return any(len(list(s.glob("MT_*/*.png"))) >= 12 for s in staging_leftovers(out))

    env = child_env()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mtdefect.stages.load_data"],
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        caught = wait_for(half_written, timeout=120, interval=0.01, alive=proc)
    finally:
        code = kill_group(proc)
    output = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
    assert caught and code == -9, f"the load finished before the kill (exit {code}): {output}"

    leftovers = staging_leftovers(out)
    assert leftovers, "expected the killed process's staging folder (no cleanup runs on SIGKILL)"
    for leftover in leftovers:
        assert_never_accepted(leftover, work / "leftover-split.csv")
    if previous:
        assert tree_hashes(out) == before, "the previous dataset changed under a killed reload"
    else:
        assert not out.exists()
        split = run([sys.executable, "-m", "mtdefect.stages.split"], work, env, timeout=120)
        assert split.returncode == 1 and "not a complete dataset" in split.output, split.output
        assert not (work / "data" / "split.csv").exists()

    rerun = run([sys.executable, "-m", "mtdefect.stages.load_data"], work, env, timeout=120).check()
    assert "360 image/mask pairs" in rerun.output
    summary = read_summary(out)
    assert summary["images"] == 360 and len(list(out.glob("MT_*/*.png"))) == 360


# ---------------------------------------------------------------- pickled checkpoints and weights


class Payload:
    """Unpickling this creates ``marker``: proof that the file's code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def write_pickle(path: Path, marker: Path, kind: str) -> Path:
    import torch

    payload = {"state_dict": {}, "epoch": 0, "callbacks": Payload(marker)}
    if kind == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    return path


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("kind", ["torch.save", "raw-pickle"])
def test_pickled_checkpoint_is_refused_by_load_best_weights(tmp_path: Path, kind: str) -> None:
    import torch

    from mtdefect.train import load_best_weights

    module = torch.nn.Linear(3, 2)
    honest = tmp_path / "honest.ckpt"
    torch.save({"state_dict": {k: v + 1 for k, v in module.state_dict().items()}, "epoch": 4}, honest)
    honest_trainer = SimpleNamespace(checkpoint_callback=SimpleNamespace(best_model_path=str(honest)))
    assert load_best_weights(module, honest_trainer) == str(honest)
    assert torch.equal(module.bias, torch.load(honest, weights_only=True)["state_dict"]["bias"])

    marker = tmp_path / "payload-ran"
    evil = write_pickle(tmp_path / "best.ckpt", marker, kind)
    trainer = SimpleNamespace(checkpoint_callback=SimpleNamespace(best_model_path=str(evil)))
    before = {k: v.clone() for k, v in module.state_dict().items()}
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_best_weights(module, trainer)
    assert not marker.exists(), "the checkpoint's pickle payload was executed"
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from mtdefect.inference import ModelSettings
    from mtdefect.inference.network import build_net
    from mtdefect.model.bundle import write_model_dir

    net_cfg = dict(
        arch="Unet",
        encoder="resnet10t",
        pretrained=False,
        in_channels=1,
        classes=1,
        decoder_channels=[16, 8, 8, 8, 8],
    )
    out = tmp_path_factory.mktemp("m") / "model"
    return write_model_dir(build_net(**net_cfg), ModelSettings(net=net_cfg), out)


@pytest.mark.parametrize("kind", ["torch.save", "raw-pickle"])
def test_model_folder_with_pickled_weights_is_refused(model_dir: Path, tmp_path: Path, kind: str) -> None:
    import shutil

    import numpy as np

    from mtdefect.inference import Predictor

    folder = tmp_path / "model"
    shutil.copytree(model_dir, folder)
    gray = np.full((40, 50), 100, np.uint8)
    assert Predictor.from_dir(folder, backend="torch").predict(gray)[0].mask.shape == (40, 50)  # control

    marker = tmp_path / "payload-ran"
    write_pickle(folder / "weights.safetensors", marker, kind)
    for backend in ("torch", "auto"):
        with pytest.raises(ValueError, match=r"weights\.safetensors.*not a valid safetensors file"):
            Predictor.from_dir(folder, backend=backend)
    assert not marker.exists(), "the weights file's pickle payload was executed"
