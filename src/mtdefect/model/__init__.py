"""Network definition (net.py, importable by serving) and training module (module.py, Lightning)."""
