"""Training side of the model: the LightningModule (module.py), its losses (losses.py), pretrained
encoder weights (pretrained.py), the tile-head refit (head_fit.py) and the model folder writer
(bundle.py). The network itself is built by ``mtdefect.inference.network`` (no training imports),
so the service rebuilds it without this package."""
