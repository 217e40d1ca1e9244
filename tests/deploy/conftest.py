"""The deploy tests use the service tests' tiny model and model store (same fixtures, same code)."""

from tests.service.conftest import model_home, tiny_model_dir  # noqa: F401
