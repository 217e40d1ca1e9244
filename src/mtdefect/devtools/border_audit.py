"""Where a model's false-positive mask pixels lie: in the 4 % band along each side of the tile, or inside.

    python -m mtdefect.devtools.border_audit models/segmenter data/split.csv test border_test.json

Through the service's path (``scoring.score_split``: decode → Predictor → probability) with the model's
own postprocessing; per side (top, bottom, left, right; a corner pixel counts for both its sides), on
clean and defective tiles, and the share of images whose false positives touch the band.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from mtdefect.data.split import read_manifest
from mtdefect.fileio import write_json_atomic
from mtdefect.inference import Predictor, postprocess
from mtdefect.scoring import score_split, split_metrics

FRACTION = 0.04


def side_bands(shape: tuple[int, int], fraction: float = FRACTION) -> dict[str, np.ndarray]:
    height, width = shape
    dy, dx = max(int(round(height * fraction)), 1), max(int(round(width * fraction)), 1)
    bands = {name: np.zeros(shape, dtype=bool) for name in ("top", "bottom", "left", "right")}
    bands["top"][:dy], bands["bottom"][-dy:] = True, True
    bands["left"][:, :dx], bands["right"][:, -dx:] = True, True
    return bands


def context_infer(predictor: Predictor, gray: np.ndarray, context: int, mode: str) -> tuple[np.ndarray, dict]:
    """The network's answer when the normalised tile is first padded by ``context`` pixels on every
    side (``mode``: numpy's reflect/edge/constant), then to the stride; the padding is cut off again.
    An experiment on the inference path only: the library pads bottom/right by edge replication."""
    from mtdefect.inference.postprocess import restore_probability
    from mtdefect.inference.preprocess import InputGeometry, normalize, scale_image

    settings = predictor.settings.preprocess
    scaled = scale_image(gray, settings)
    image = normalize(scaled, settings)
    if context:
        image = np.pad(image, context, mode=mode)
    stride = settings.stride
    pad = ((0, (-image.shape[0]) % stride), (0, (-image.shape[1]) % stride))
    image = np.pad(image, pad, mode=mode if mode != "constant" else "constant")
    logits, tile_logits = predictor.runner(np.ascontiguousarray(image[None, None], dtype=np.float32))
    logits = predictor.merge_views(logits)[
        context : context + scaled.shape[0], context : context + scaled.shape[1]
    ]
    geometry = InputGeometry(original=gray.shape, scaled=scaled.shape, padded=scaled.shape)
    return restore_probability(logits, geometry), predictor.class_scores(tile_logits)


def audit(
    model_dir: Path,
    dataset_dir: Path,
    manifest: Path,
    split: str,
    backend: str = "torch",
    context: int = 0,
    mode: str = "edge",
) -> dict:
    predictor = Predictor.from_dir(model_dir, backend=backend)
    post = predictor.settings.postprocess
    if context or mode != "edge":
        predictor.infer = lambda gray, check=None: context_infer(predictor, gray, context, mode)  # type: ignore[method-assign]
    totals = {"all": 0, "band": 0, "top": 0, "bottom": 0, "left": 0, "right": 0}
    by_kind = {"clean": dict(totals), "defective": dict(totals)}
    images_with_band_fp = 0
    records = read_manifest(manifest, split)
    items = list(score_split(predictor, dataset_dir, records))
    for item in items:
        answer = postprocess(item.probability, post, item.class_scores)
        false_positive = (answer.mask > 0) & ~item.truth
        bands = side_bands(false_positive.shape)
        band = np.logical_or.reduce(list(bands.values()))
        kind = by_kind["clean" if item.record.class_name == post.free_class else "defective"]
        kind["all"] += int(false_positive.sum())
        kind["band"] += int((false_positive & band).sum())
        for name, mask in bands.items():
            kind[name] += int((false_positive & mask).sum())
        images_with_band_fp += bool((false_positive & band).any())
    everything = {k: by_kind["clean"][k] + by_kind["defective"][k] for k in totals}
    scored = split_metrics(items, post)
    quality = {k: scored[k] for k in ("dice", "mean_class_dice", "per_class_dice", "detection")}
    quality["class_top1"] = scored.get("classification", {}).get("accuracy")
    return {
        "model": {"dir": str(model_dir), "net": predictor.settings.net},
        "variant": {"context": context, "pad_mode": mode},
        "split": split,
        "images": len(records),
        "band_fraction": FRACTION,
        "band_share_of_fp_pixels": everything["band"] / everything["all"] if everything["all"] else None,
        "images_with_fp_in_band": images_with_band_fp,
        "fp_pixels": everything,
        "fp_pixels_by_kind": by_kind,
        "metrics": quality,  # under the model's own postprocessing (calibrated as the model was)
    }


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (4, 6):
        print(
            "usage: python -m mtdefect.devtools.border_audit MODEL_DIR MANIFEST SPLIT OUT.json"
            " [CONTEXT MODE]",
            file=sys.stderr,
        )
        sys.exit(2)
    model_dir, manifest, split, out = Path(args[0]), Path(args[1]), args[2], Path(args[3])
    context, mode = (int(args[4]), args[5]) if len(args) == 6 else (0, "edge")
    result = audit(model_dir, Path("data/tiles"), manifest, split, context=context, mode=mode)
    write_json_atomic(out, result, indent=2)
    print(
        f"border audit: {result['band_share_of_fp_pixels']:.3f} of false-positive pixels in the band; "
        f"{result['images_with_fp_in_band']} of {result['images']} images; by side {result['fp_pixels']}"
    )


if __name__ == "__main__":
    main()
