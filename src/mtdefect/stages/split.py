"""Stage: dataset folder → stratified, seeded train/val/test manifest CSV (whole tiles per split)."""

from collections import Counter

from omegaconf import DictConfig

from mtdefect.data.split import make_split, split_summary
from mtdefect.stages._common import run


def stage(cfg: DictConfig) -> None:
    s = cfg.data.split
    records = make_split(
        cfg.paths.data_dir,
        cfg.paths.manifest,
        s.val_fraction,
        s.test_fraction,
        s.seed,
        s.get("max_per_class"),
        s.get("group_gap"),
    )
    counts = Counter(r.split for r in records)
    print(
        f"split: train {counts['train']}, val {counts['val']}, test {counts['test']} → {cfg.paths.manifest}"
    )
    for class_name, splits in split_summary(records, s.get("group_gap")).items():
        shares = ", ".join(f"{name} {n} in {g} group{'s' * (g != 1)}" for name, (n, g) in splits.items())
        print(f"  {class_name}: {shares}")


if __name__ == "__main__":
    run(stage, "split")
