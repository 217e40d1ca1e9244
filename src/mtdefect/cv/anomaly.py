"""A clean-tile anomaly branch measured under cross-validation (issue #21, first step: is it worth it?).

PatchCore-style: patch features of an encoder (stride-8 and stride-16 maps, the coarser upsampled,
concatenated, 3×3 average-pooled) from the *defect-free training tiles of a fold* form a memory
bank (a seeded random subsample); an image's anomaly score is the largest nearest-neighbour
distance of its patches to the bank. Each fold's bank sees only that fold's training tiles; the
held-out fold and the inner validation tiles are scored against it (validation: the reference the
fusion normalises by). The encoder is the packaged ImageNet EfficientNet-Lite0 (no training needed,
so the branch can be measured before any fold model exists).

    python -m mtdefect.cv.anomaly            # every fold of params.yaml's cv settings → reports/cv/anomaly/
    python -m mtdefect.cv.anomaly 0.05 0,1   # a 5 % bank, folds 0 and 1 only
    python -m mtdefect.cv.anomaly 0.05 0,1,2,3,4 fold   # each fold's own trained encoder
    python -m mtdefect.cv.anomaly --border 2            # 2 edge patches left out → anomaly_border2/
    python -m mtdefect.cv.anomaly --border 2 --unseen   # leave-one-class-out jobs → …_unseen/
    python -m mtdefect.cv.anomaly --global              # whole-tile Gaussian → anomaly_global/
    python -m mtdefect.cv.anomaly --global --knn 5      # 5 nearest clean tiles → anomaly_global_knn5/

``--global`` swaps the patch bank for one Gaussian of whole-tile features (after Rippel et al., 2020):
each map of stride ≥ 4, over the tile's valid area, summarised by its per-channel mean, standard
deviation and maximum; fitted (shrunk covariance) on the fold's clean training tiles; an image's score
is its Mahalanobis distance. A tile is judged as a whole, so an odd rim patch weighs little against
what the whole tile looks like.

``--knn K`` keeps the Gaussian's metric (the same shrunk covariance) but scores a tile by its mean
distance to its K nearest clean training tiles instead of to their one mean. Clean tiles are several
populations — six lightings, two surface finishes — and one Gaussian spreads over all of them; a
clean tile's nearest neighbours are the clean tiles photographed like it.

``--border N`` leaves the outermost N stride-8 patches of the tile's valid area out of the bank and
of the score: a tile's dark rim and the padding beyond it are where clean tiles look least alike, so
the largest distance of a clean tile sat there (session 9: pooled AUROC 0.67 → 0.80 with N = 2).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from mtdefect.data.folds import fold_manifest_path, job_name
from mtdefect.data.split import read_manifest
from mtdefect.fileio import write_json_atomic
from mtdefect.inference import PreprocessSettings
from mtdefect.inference.preprocess import preprocess
from mtdefect.scoring import read_image


def imagenet_encoder(encoder: str = "tf_efficientnet_lite0") -> torch.nn.Module:
    from mtdefect.inference.network import build_net
    from mtdefect.model.pretrained import load_pretrained

    net = build_net(arch="Unet", encoder=encoder, in_channels=1)
    load_pretrained(net, encoder, "package", 1)
    return net.encoder.eval()


@torch.no_grad()
def patch_features(
    encoder: torch.nn.Module, gray: np.ndarray, settings: PreprocessSettings, border: int = 0
) -> torch.Tensor:
    """(patches, channels) float32: the stride-8 and stride-16 maps of the valid (unpadded) area, less
    ``border`` patches along each edge (never fewer than one patch row or column)."""
    batch, geometry = preprocess(gray, settings)
    maps = encoder(torch.from_numpy(batch))
    height = batch.shape[-2]
    s8 = next(m for m in maps if m.shape[-2] == height // 8)
    s16 = next(m for m in maps if m.shape[-2] == height // 16)
    joined = torch.cat([s8, F.interpolate(s16, size=s8.shape[-2:], mode="bilinear", align_corners=False)], 1)
    pooled = F.avg_pool2d(joined, 3, stride=1, padding=1, count_include_pad=False)
    valid_h, valid_w = -(-geometry.scaled[0] // 8), -(-geometry.scaled[1] // 8)
    top = min(border, (valid_h - 1) // 2)
    left = min(border, (valid_w - 1) // 2)
    inner = pooled[0, :, top : valid_h - top, left : valid_w - left]
    return inner.flatten(1).T.contiguous()


@torch.no_grad()
def global_features(encoder: torch.nn.Module, gray: np.ndarray, settings: PreprocessSettings) -> torch.Tensor:
    """(3 · channels,) float32: each encoder map of stride ≥ 4, over the valid (unpadded) area, as its
    per-channel mean, standard deviation and maximum (the maximum is what a small defect moves)."""
    batch, geometry = preprocess(gray, settings)
    height = batch.shape[-2]
    parts = []
    for feature_map in encoder(torch.from_numpy(batch)):
        stride = height // feature_map.shape[-2]
        if stride < 4:
            continue
        valid_h, valid_w = -(-geometry.scaled[0] // stride), -(-geometry.scaled[1] // stride)
        values = feature_map[0, :, :valid_h, :valid_w].flatten(1)
        spread = values.std(1) if values.shape[1] > 1 else torch.zeros(values.shape[0])
        parts += [values.mean(1), spread, values.amax(1)]
    return torch.cat(parts).float()


GAUSSIAN_SHRINKAGE = 0.1  # share of the identity in the standardised covariance (0.01-0.7 measured alike)


def fit_gaussian(samples: np.ndarray, shrinkage: float = GAUSSIAN_SHRINKAGE) -> tuple[np.ndarray, np.ndarray]:
    """(mean, precision) of standardised ``samples`` (rows), the covariance shrunk toward the identity
    so that a few hundred tiles can fit ~1,500 dimensions; the precision is mapped back to raw units."""
    mean = samples.mean(0)
    scale = samples.std(0) + 1e-6
    covariance = np.atleast_2d(np.cov((samples - mean) / scale, rowvar=False))
    precision = np.linalg.inv((1 - shrinkage) * covariance + shrinkage * np.eye(len(covariance)))
    return mean, precision / scale[:, None] / scale[None, :]


def mahalanobis(values: np.ndarray, mean: np.ndarray, precision: np.ndarray) -> float:
    centred = np.asarray(values, np.float64) - mean
    return float(np.sqrt(max(centred @ precision @ centred, 0.0)))


def whitener(mean: np.ndarray, precision: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """Rows → coordinates whose Euclidean distances are the Mahalanobis distances of ``precision``."""
    factor = np.linalg.cholesky(precision)  # precision = factor · factorᵀ
    return lambda rows: (np.atleast_2d(np.asarray(rows, np.float64)) - mean) @ factor


def knn_distance(values: np.ndarray, bank: np.ndarray, neighbours: int) -> float:
    """Mean Euclidean distance of one row to its ``neighbours`` nearest rows of ``bank``."""
    distances = np.linalg.norm(bank - values, axis=1)
    return float(np.sort(distances)[: min(neighbours, len(bank))].mean())


def nearest_distance(queries: torch.Tensor, bank: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Each query's Euclidean distance to its nearest bank row."""
    best = torch.full((queries.shape[0],), float("inf"))
    for start in range(0, bank.shape[0], chunk):
        best = torch.minimum(best, torch.cdist(queries, bank[start : start + chunk]).min(dim=1).values)
    return best


def fold_scores(
    features: dict[str, torch.Tensor],
    manifest: Path,
    free_class: str,
    subsample: float,
    seed: int,
    neighbours: int = 0,
) -> list[dict]:
    """Bank (patch features) or Gaussian (whole-tile features, 1-D) from the fold's defect-free
    ``train`` tiles; score its ``test`` images and its clean ``val`` images. ``neighbours`` > 0: a
    whole-tile image's mean distance to that many nearest clean training tiles, in the Gaussian's
    metric, instead of its distance to their mean."""
    records = read_manifest(manifest)
    clean_train = [r.image for r in records if r.split == "train" and r.class_name == free_class]
    if features[clean_train[0]].ndim == 1:  # whole-tile features: one Gaussian
        samples = np.stack([features[name].numpy() for name in clean_train])
        mean, precision = fit_gaussian(samples)
        if neighbours > 0:
            whiten = whitener(mean, precision)
            bank = whiten(samples)
            return scored_rows(
                records, free_class, lambda f: knn_distance(whiten(f.numpy())[0], bank, neighbours), features
            )
        return scored_rows(records, free_class, lambda f: mahalanobis(f.numpy(), mean, precision), features)
    pooled = torch.cat([features[name] for name in clean_train])
    generator = torch.Generator().manual_seed(seed)
    keep = torch.randperm(pooled.shape[0], generator=generator)[: max(1, int(pooled.shape[0] * subsample))]
    bank = pooled[keep]
    return scored_rows(records, free_class, lambda f: float(nearest_distance(f, bank).max()), features)


def scored_rows(
    records: list, free_class: str, score: Callable[[torch.Tensor], float], features: dict[str, torch.Tensor]
) -> list[dict]:
    """One row per held-out image and per clean validation image (the reference the fusion
    normalises by); training images are never scored."""
    return [
        {
            "image": record.image,
            "class": record.class_name,
            "split": record.split,
            "anomaly": score(features[record.image]),
        }
        for record in records
        if record.split == "test" or (record.split == "val" and record.class_name == free_class)
    ]


def fold_encoder(model_dir: Path) -> tuple[torch.nn.Module, PreprocessSettings]:
    """The trained encoder of a fold's model (``cv`` stage output) and the preprocessing it was
    trained with: features the segmentation training shaped for this very texture."""
    from mtdefect.inference import ModelSettings
    from mtdefect.inference.predictor import load_torch_net

    settings = ModelSettings.load(model_dir)
    return load_torch_net(model_dir, settings, "cpu").encoder.eval(), settings.preprocess


def needed_images(manifest: Path, free_class: str) -> list[str]:
    """What a fold's bank and scoring read: clean training tiles, held-out images, clean val tiles."""
    return [r.image for r in read_manifest(manifest) if r.class_name == free_class or r.split == "test"]


def output_dir(
    reports_dir: str | Path,
    source: str,
    border: int = 0,
    unseen: bool = False,
    pooling: str = "patch",
    neighbours: int = 0,
) -> Path:
    """``reports/cv/anomaly[_global[_knn<K>]][_fold_encoder][_border<N>][_unseen]``: one folder per
    variant."""
    name = (
        "anomaly" + ("_global" if pooling == "global" else "") + (f"_knn{neighbours}" if neighbours else "")
    )
    name += "" if source == "imagenet" else "_fold_encoder"
    return Path(reports_dir) / (name + (f"_border{border}" if border else "") + ("_unseen" if unseen else ""))


def run(
    cfg: DictConfig,
    subsample: float = 0.05,
    encoder_name: str = "tf_efficientnet_lite0",
    folds: list[int] | None = None,
    source: str = "imagenet",
    border: int = 0,
    unseen: bool = False,
    pooling: str = "patch",
    neighbours: int = 0,
) -> Path:
    """``source``: ``imagenet`` (the packaged encoder, one feature pass for all jobs) or ``fold``
    (each job's own trained encoder from its model folder: features per job). ``unseen``: the
    leave-one-class-out jobs (``cv.unseen``) instead of the folds; each bank holds only that job's
    clean training tiles, so the left-out class is scored by a bank that never saw it either."""
    torch.manual_seed(0)
    c = cfg.cv
    manifest_dir = Path(c.unseen.manifest_dir if unseen else c.manifest_dir)
    model_dir = Path(c.unseen.model_dir if unseen else c.model_dir)
    jobs: list[int | str]
    if unseen:
        jobs = sorted(p.stem for p in manifest_dir.glob("unseen_*.csv"))
        if not jobs:
            raise FileNotFoundError(
                f"no leave-one-class-out manifests in {manifest_dir}: run the unseen stage"
            )
    else:
        jobs = list(range(c.k)) if folds is None else list(folds)
    root = Path(cfg.paths.data_dir)

    if pooling not in ("patch", "global"):
        raise ValueError(f"anomaly pooling must be 'patch' or 'global', got {pooling!r}")
    if neighbours and pooling != "global":
        raise ValueError("nearest clean tiles (neighbours) score whole-tile features: use pooling 'global'")

    def extract(encoder: torch.nn.Module, settings: PreprocessSettings, names: list[str]) -> dict:
        def one(gray: np.ndarray) -> torch.Tensor:
            if pooling == "global":
                return global_features(encoder, gray, settings)
            return patch_features(encoder, gray, settings, border)

        return {name: one(read_image(root, name)) for name in names}

    features: dict[str, torch.Tensor] = {}
    feature_seconds = 0.0
    if source == "imagenet":
        settings = PreprocessSettings(**dict(cfg.data.preprocess))
        names = sorted(
            {r.image for job in jobs for r in read_manifest(fold_manifest_path(manifest_dir, job))}
        )
        started = time.perf_counter()
        features = extract(imagenet_encoder(encoder_name), settings, names)
        feature_seconds = time.perf_counter() - started
    elif source != "fold":
        raise ValueError(f"anomaly source must be 'imagenet' or 'fold', got {source!r}")
    out_dir = output_dir(c.reports_dir, source, border, unseen, pooling, neighbours)
    for index, job in enumerate(jobs):
        begun = time.perf_counter()
        name = job_name(job)
        if source == "fold":
            encoder, settings = fold_encoder(model_dir / name)
            names = needed_images(fold_manifest_path(manifest_dir, job), cfg.data.free_class)
            features = extract(encoder, settings, names)
            feature_seconds = time.perf_counter() - begun
        seed = c.seed + (job if isinstance(job, int) else index)
        rows = fold_scores(
            features, fold_manifest_path(manifest_dir, job), cfg.data.free_class, subsample, seed, neighbours
        )
        write_json_atomic(
            out_dir / f"{name}.json",
            {
                "fold": job,
                "encoder": f"{encoder_name} (ImageNet, packaged)"
                if source == "imagenet"
                else f"{name}'s trained encoder",
                "pooling": pooling,
                "bank_subsample": subsample if pooling == "patch" else None,
                "border_patches": border if pooling == "patch" else None,
                "nearest_clean_tiles": neighbours or None,
                "seconds": round(time.perf_counter() - begun, 1),
                "feature_seconds": round(feature_seconds, 1),
                "feature_images": len(features),
                "rows": rows,
            },
            indent=1,
        )
        print(f"anomaly: {name}: {len(rows)} images scored")
    return out_dir


def main(argv: list[str] | None = None) -> None:
    import argparse

    from mtdefect.stages._common import run as run_stage

    parser = argparse.ArgumentParser(prog="python -m mtdefect.cv.anomaly", description=__doc__.split("\n")[0])
    parser.add_argument("subsample", nargs="?", type=float, default=0.05, help="share of patches banked")
    parser.add_argument("folds", nargs="?", default=None, help="comma-separated folds (default: all)")
    parser.add_argument("source", nargs="?", default="imagenet", choices=("imagenet", "fold"))
    parser.add_argument("--border", type=int, default=0, help="patches left out along each edge")
    parser.add_argument("--unseen", action="store_true", help="the leave-one-class-out jobs")
    parser.add_argument(
        "--global",
        dest="pooling",
        action="store_const",
        const="global",
        default="patch",
        help="one Gaussian of whole-tile features instead of a patch bank",
    )
    parser.add_argument(
        "--knn",
        type=int,
        default=0,
        metavar="K",
        help="with --global: mean distance to the K nearest clean training tiles instead of to their mean",
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.knn < 0:
        parser.error("--knn must be ≥ 0")
    if args.knn and args.pooling != "global":
        parser.error("--knn scores whole tiles: add --global")
    if args.border < 0 or not 0 < args.subsample <= 1:
        parser.error("--border must be ≥ 0 and the subsample in (0, 1]")
    if args.pooling == "global" and args.border:
        parser.error("--border applies to the patch bank, not to --global")
    folds = [int(f) for f in args.folds.split(",")] if args.folds else None
    run_stage(
        lambda cfg: run(
            cfg,
            args.subsample,
            folds=folds,
            source=args.source,
            border=args.border,
            unseen=args.unseen,
            pooling=args.pooling,
            neighbours=args.knn,
        ),
        "cv anomaly",
    )


if __name__ == "__main__":
    main()
