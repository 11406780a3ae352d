"""Shared fixtures: paths to the real data sets and a private RabbitMQ node for integration tests."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
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


@contextmanager
def private_node(
    name: str, amqp_port: int, mqtt_port: int, dist_port: int, **options
) -> Iterator[RabbitNode]:  # noqa: F821
    """Run a RabbitMQ node with the MQTT plugin in a temporary folder on its own ports, then remove it.

    `options` are further RabbitNode fields (TLS, anonymous access); a TLS node's `tls_dir` may lie
    inside the temporary folder, which is passed to a callable `tls_dir`.
    """
    from scripts.rabbitmq_node import RabbitNode

    data = Path(tempfile.mkdtemp(prefix=f"{name}-"))
    if callable(options.get("tls_dir")):
        options["tls_dir"] = options["tls_dir"](data)
    node = RabbitNode(
        name=name,
        amqp_port=amqp_port,
        mqtt_port=mqtt_port,
        dist_port=dist_port,
        data_dir=data / "node",
        **options,
    )
    if node.is_running():
        node.stop()
    node.start()
    try:
        yield node
    finally:
        node.stop()
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture(scope="session")
def rabbit_node() -> Iterator[RabbitNode]:  # noqa: F821
    """A RabbitMQ node with the MQTT plugin, private to this test session, on its own ports."""
    with private_node("ambulance-test", 5686, 1897, 25686) as node:
        yield node


POSTGRES_ADMIN_URL = os.environ.get(
    "AMBULANCE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty hub store: a SQLite file, or a new database on the machine's PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'hub.sqlite'}"
        return
    import uuid

    import psycopg

    name = f"hub_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True)
    except psycopg.OperationalError as exc:
        pytest.fail(
            f"PostgreSQL at {POSTGRES_ADMIN_URL} is unreachable ({exc}); start it or set AMBULANCE_TEST_POSTGRES"
        )
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    yield f"{base}/{name}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
