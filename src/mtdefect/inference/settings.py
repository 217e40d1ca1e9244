"""The settings object that travels with a trained model.

It is written next to the weights by training, read by evaluation and by the service, so the
input handling, the threshold and the minimum region area can never differ between them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

SETTINGS_FILE = "settings.json"
WEIGHTS_FILE = "weights.safetensors"
ONNX_FILE = "model.onnx"
ONNX_INT8_FILE = "model.int8.onnx"  # static INT8 variant of ONNX_FILE (mtdefect.inference.quantize)
# per-backend postprocess calibration written by the export stage beside the exports it calibrates
# ({"onnx-int8": {"decision_threshold": ...}}); merged into ``backend_postprocess`` on load, so it
# travels with model.int8.onnx wherever the exports are copied (evaluation, the store, the bento)
BACKEND_CALIBRATION_FILE = "backend_postprocess.json"


PAD_MODES = ("zero", "edge")


@dataclass(frozen=True)
class PreprocessSettings:
    """How an image becomes a network input.

    long_side: if set, the image is scaled (aspect kept) so its longer side has this many pixels;
        None keeps the native resolution.
    scale: a fixed factor instead (aspect kept; 1.0 keeps the native resolution). Tiles come in many
        sizes, so a factor keeps every defect's pixel size in proportion (``long_side`` would shrink
        a large tile's defects and blow up a small tile's); a factor above 1 widens thin defects
        (cracks ~6 px, blowholes ~9 px across) for the network at ``scale``² the compute.
        Use one or the other.
    stride: the padded input is a multiple of this (the encoder's output stride).
    mean/std: normalisation of the [0, 1] grayscale intensities.
    per_image: normalise by the image's own mean and standard deviation instead of ``mean``/``std``,
        so the network sees brightness relative to the rest of the tile, not absolute brightness
        (tiles differ in overall brightness; a bright area of one tile is not a defect).
    pad: what fills the bottom/right padding up to the stride. ``zero``: 0 of the normalised image
        (its mean intensity), exactly what the network's own convolution padding shows at the border
        of every training crop; ``edge``: the last row/column repeated, which training crops (cut
        inside the tile) never show: streaks the network reads as defects along the tile's bottom
        and right edges (issue #20: on validation, 42 % of false-positive pixels in the 4 % border
        band, the bottom side 8x the top; ``zero`` padding: 31 %, Dice 0.729 → 0.782). Settings saved
        before this field existed load as ``edge``, the padding those models were calibrated with.
    """

    long_side: int | None = None
    stride: int = 32
    mean: float = 0.5
    std: float = 0.25
    per_image: bool = False
    scale: float = 1.0
    pad: str = "zero"

    def __post_init__(self) -> None:
        if not self.scale > 0:
            raise ValueError(f"scale must be positive, got {self.scale}")
        if self.pad not in PAD_MODES:
            raise ValueError(f"pad must be one of {PAD_MODES}, got {self.pad!r}")
        if self.long_side is not None and self.scale != 1.0:
            raise ValueError("set long_side or scale, not both")


SCORE_SOURCES = ("mask", "head")
VIEW_FUSION_NAMES = ("median", "mean", "max")  # implemented in mtdefect.inference.multiview


@dataclass(frozen=True)
class PostprocessSettings:
    """How a probability map becomes answers.

    threshold: pixel probability at or above which a pixel is a defect.
    min_region_area: connected regions smaller than this (pixels of the input image) are dropped.
    score_window: the image score is the highest mean probability over any ``score_window`` ×
        ``score_window`` window (1: the highest pixel probability). A window ignores the isolated
        bright pixels a clean tile can have, so the score ranks tiles better.
    decision_threshold: None: a tile is defective when a region survives ``threshold`` and
        ``min_region_area``. A number: a tile is defective when its score reaches it, and a tile
        judged clean reports no regions (an empty mask) unless it passes the mask gate below.
        Calibration sets it so the false-alarm rate on defect-free validation tiles stays within budget.
    mask_gate_threshold / mask_gate_window: which tiles show their regions (their mask). A tile judged
        defective always does. Gate None: no other tile does (a tile judged clean shows an empty
        mask). A number: a tile judged clean whose gate score reaches it is not rejected, yet shows
        where its likely defects are (suspect regions). The gate score is the decision's own score
        (``mask_gate_window`` None) or the mask's highest mean probability over a
        ``mask_gate_window``² window (a wide window asks for a solid defect, not a speck). Calibration
        chooses both on validation for the best mask with at most ``calibration.max_region_rate`` of
        the defect-free tiles showing any region (issue #20: gating masks at a 1 % false-alarm
        decision deleted the masks of most defective tiles).
    score_source: where the image score comes from. ``mask``: the windowed probability above.
        ``head``: the tile head's P(defect), its defect classes' probabilities summed (1 − P(``free_class``)
        without rounding to 0 for very clean tiles: ``postprocess.defect_probability``; models with a
        tile-class head).
    free_class: the tile head's "no defect" class.
    view_fusion: how the scores of one physical tile's photographs (its lightings, sent together to
        the multi-view endpoint) become the tile's score: ``median`` (default: one bad view of a clean
        tile is common, so ``max`` rejects good tiles), ``mean`` or ``max`` (``multiview.VIEW_FUSIONS``).
    views_decision_threshold: the fused score at or above which the tile is rejected; chosen on the
        validation split's physical tiles for the false-alarm budget (the export stage, per backend).
        None: ``decision_threshold`` applies to the fused score.

    Three numbers are easy to confuse: ``threshold`` is per *pixel* (the mask), ``decision_threshold``
    per *tile* (reject or not), ``min_region_area`` in pixels per region.
    """

    threshold: float = 0.5
    min_region_area: int = 0
    score_window: int = 1
    decision_threshold: float | None = None
    mask_gate_threshold: float | None = None
    mask_gate_window: int | None = None
    score_source: str = "mask"
    free_class: str = "MT_Free"
    view_fusion: str = "median"
    views_decision_threshold: float | None = None

    def __post_init__(self) -> None:
        if self.score_source not in SCORE_SOURCES:
            raise ValueError(f"score_source must be one of {SCORE_SOURCES}, got {self.score_source!r}")
        if self.view_fusion not in VIEW_FUSION_NAMES:
            raise ValueError(f"view_fusion must be one of {VIEW_FUSION_NAMES}, got {self.view_fusion!r}")


# test-time flips: name → the image axes (of an N x 1 x H x W batch) the flip reverses
FLIP_AXES: dict[str, tuple[int, ...]] = {"horizontal": (3,), "vertical": (2,), "both": (2, 3)}


@dataclass(frozen=True)
class ModelSettings:
    """Everything needed to rebuild and use a model, besides its weights.

    test_time_flips: flipped copies of the input (names from ``FLIP_AXES``) run through the network
    next to the original, in one batch; the logits are flipped back and averaged. Chosen on the
    validation split by calibration; each flip adds one network pass per image.
    class_names: the tile head's outputs in order (``net["tile_classes"]`` of them); a model
    without a head may list the dataset's classes for information.
    backend_postprocess: per backend (``onnx-int8``, ...), postprocess fields that replace
        ``postprocess`` when that backend serves: each backend's own calibration, chosen on the
        validation split with that backend's outputs (the export stage writes it for INT8, whose
        scores differ slightly from FP32's). Empty: every backend uses ``postprocess``.
    """

    net: dict[str, Any]
    preprocess: PreprocessSettings = field(default_factory=PreprocessSettings)
    postprocess: PostprocessSettings = field(default_factory=PostprocessSettings)
    class_names: tuple[str, ...] = ()
    info: dict[str, Any] = field(default_factory=dict)
    test_time_flips: tuple[str, ...] = ()
    backend_postprocess: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for backend, fields in self.backend_postprocess.items():
            try:  # unknown or invalid fields refuse the settings
                replace(self.postprocess, **fields)
            except TypeError as exc:
                raise ValueError(f"backend_postprocess[{backend!r}]: {exc}") from None
        unknown = [f for f in self.test_time_flips if f not in FLIP_AXES]
        if unknown or len(set(self.test_time_flips)) != len(self.test_time_flips):
            raise ValueError(
                f"test_time_flips must be distinct names from {sorted(FLIP_AXES)}, "
                f"got {list(self.test_time_flips)}"
            )

    def for_backend(self, backend: str) -> ModelSettings:
        """These settings with ``backend``'s own postprocess calibration applied, when it has one."""
        fields = self.backend_postprocess.get(backend)
        return replace(self, postprocess=replace(self.postprocess, **fields)) if fields else self

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["class_names"] = list(self.class_names)
        data["test_time_flips"] = list(self.test_time_flips)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSettings:
        return cls(
            net=dict(data["net"]),
            # saved before ``pad`` existed: those models padded (and were calibrated) by edge replication
            preprocess=PreprocessSettings(**{"pad": "edge", **data.get("preprocess", {})}),
            postprocess=PostprocessSettings(**data.get("postprocess", {})),
            class_names=tuple(data.get("class_names", ())),
            info=dict(data.get("info", {})),
            test_time_flips=tuple(data.get("test_time_flips", ())),
            backend_postprocess={k: dict(v) for k, v in data.get("backend_postprocess", {}).items()},
        )

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / SETTINGS_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True))
        return path

    @classmethod
    def load(cls, directory: str | Path) -> ModelSettings:
        """``settings.json`` of ``directory``, with the per-backend calibration of
        ``BACKEND_CALIBRATION_FILE`` (when present) merged into ``backend_postprocess``."""
        path = Path(directory) / SETTINGS_FILE
        extra = Path(directory) / BACKEND_CALIBRATION_FILE
        try:
            data = json.loads(path.read_text())
            if extra.exists():
                path = extra
                calibrated = json.loads(extra.read_text())
                if not isinstance(calibrated, dict):
                    raise ValueError("must map backend names to postprocess fields")
                merged = {**data.get("backend_postprocess", {})}
                for backend, fields in calibrated.items():
                    merged[backend] = {**merged.get(backend, {}), **fields}
                data["backend_postprocess"] = merged
            return cls.from_dict(data)
        except FileNotFoundError:
            raise FileNotFoundError(f"model settings missing: {path}") from None
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"model settings unreadable: {path}: {exc}") from None
