"""Fixtures for the service tests: a tiny model trained in this session, a model store holding it,
and real `bentoml serve` processes (started lazily, once per session, killed at the end)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")  # no usage reports from test processes

from .svc_support import (
    STRICT,
    ModelHome,
    Server,
    bentoml_home_at,
    running_server,
    train_tiny_model,
)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return train_tiny_model(tmp_path_factory.mktemp("tiny-model") / "model")


@pytest.fixture(scope="session")
def model_home(tiny_model_dir, tmp_path_factory) -> ModelHome:
    """A BentoML home whose model store holds the tiny model (servers get it via BENTOML_HOME)."""
    home = tmp_path_factory.mktemp("bentoml-home")
    with bentoml_home_at(home):
        from mtdefect import store

        tag = store.save_model_dir(tiny_model_dir, labels={"purpose": "service-tests"})
    return ModelHome(home=home, tag=tag, model_dir=tiny_model_dir)


@pytest.fixture
def use_model_home(model_home) -> Iterator[ModelHome]:
    """This process's BentoML store is the test one for the duration of one test only, so tests
    elsewhere in the session never see it."""
    with bentoml_home_at(model_home.home):
        yield model_home


@pytest.fixture(scope="session")
def server(model_home, tmp_path_factory) -> Iterator[Server]:
    """Default settings: open API, 20 MB / 4096x4096 caps, backend auto (ONNX: the model has one)."""
    with running_server(model_home, tmp_path_factory.mktemp("logs") / "default.log") as srv:
        yield srv


@pytest.fixture(scope="session")
def strict_server(model_home, tmp_path_factory) -> Iterator[Server]:
    """API key on, small byte/pixel caps, 2 requests in flight at most, 3 s timeout, PyTorch backend."""
    with running_server(model_home, tmp_path_factory.mktemp("logs") / "strict.log", **STRICT) as srv:
        yield srv


@pytest.fixture(scope="session")
def broken_server(model_home, tmp_path_factory) -> Iterator[Server]:
    """Pointed at a tag that is not in the store: must start, stay unready and answer 503."""
    log = tmp_path_factory.mktemp("logs") / "broken.log"
    with running_server(model_home, log, ready_path="/livez", MT_MODEL_TAG="nope:latest") as srv:
        yield srv


@pytest.fixture(scope="session")
def copy_model_dir(tiny_model_dir, tmp_path_factory):
    """A fresh copy of the tiny model folder, to damage."""

    def make(name: str) -> Path:
        target = tmp_path_factory.mktemp("damaged") / name
        shutil.copytree(tiny_model_dir, target)
        return target

    return make
