"""Write a trained network as a model folder: settings.json + weights.safetensors (no pickle)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from mtdefect.inference.settings import WEIGHTS_FILE, ModelSettings


def write_model_dir(net: torch.nn.Module, settings: ModelSettings, out_dir: str | Path) -> Path:
    """Write atomically: a staging folder renamed over ``out_dir`` once both files are complete."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
        save_file(state, str(staging / WEIGHTS_FILE))
        settings.save(staging)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return out_dir
