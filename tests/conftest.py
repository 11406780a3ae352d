"""Shared fixtures: paths to the real data sets and a private RabbitMQ node for integration tests."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from models.data_paths import KTAS_FILE, default_data_dir

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

PROJECT_DIR = Path(__file__).resolve().parents[1]
DATA_DIR = default_data_dir()
KTAS_CSV = DATA_DIR / KTAS_FILE


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not KTAS_CSV.is_file():
        pytest.fail(f"shared data not found at {DATA_DIR}; set AMBULANCE_DATA_DIR")
    return DATA_DIR


@pytest.fixture(scope="session")
def rabbit_node() -> Iterator[RabbitNode]:  # noqa: F821
    """A RabbitMQ node with the MQTT plugin, private to this test session, on its own ports."""
    from scripts.rabbitmq_node import RabbitNode

    data = Path(tempfile.mkdtemp(prefix="ambulance-test-rabbitmq-"))
    node = RabbitNode(name="ambulance-test", amqp_port=5686, mqtt_port=1897, dist_port=25686, data_dir=data)
    if node.is_running():
        node.stop()
    node.start()
    yield node
    node.stop()
    shutil.rmtree(data, ignore_errors=True)
