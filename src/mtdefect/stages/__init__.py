"""Thin DVC entry points: read params.yaml, call the library, write outputs atomically."""
