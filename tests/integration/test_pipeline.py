"""A frame on an ambulance becomes an alert at the right hospital, once, with the scores behind it."""

from __future__ import annotations

from pathlib import Path

from protocol import HospitalAlert, parse_message
from protocol.topics import hospital_queue

from .conftest import CRITICAL, NORMAL, make_agent, read_queue, unique, wait_until


def test_critical_frame_becomes_hospital_alert(rabbit_node, hub, edge_scorer, tmp_path: Path) -> None:
    device = unique("amb")
    local = make_agent(
        device, rabbit_node.mqtt_port, tmp_path / "outbox.sqlite", edge_scorer, hub.hospital_id
    )
    try:
        local.uplink.start()
        critical = local.agent.handle_frame("incident-critical", CRITICAL)
        routine = local.agent.handle_frame("incident-routine", NORMAL)
        assert critical is not None
        assert critical.is_urgent
        assert routine is not None
        assert not routine.is_urgent
        assert local.pump_until_delivered(15), "outbox did not drain"
    finally:
        local.close()

    assert wait_until(lambda: {(device, 0), (device, 1)} <= hub.store.result_keys(), 15)
    assert wait_until(lambda: hub.store.counts().get("alerts_delivered", 0) >= 1, 10)

    messages = read_queue(rabbit_node.amqp_port, hospital_queue(hub.hospital_id))
    alerts = [parse_message(HospitalAlert, body) for _, body, _ in messages]
    assert len(alerts) == 1, f"expected one alert, got {[a.alert_id for a in alerts]}"
    alert = alerts[0]
    assert alert.hospital_id == hub.hospital_id
    assert alert.device_id == device
    assert alert.incident_id == "incident-critical"
    assert alert.sequence == 0
    assert alert.acuity <= 2
    assert alert.news2.total >= 7
    assert "NEWS2" in alert.reason
    assert alert.edge.model is not None
    assert alert.hub is not None
    assert alert.hub.model is not None
    assert alert.vitals.hr_bpm == CRITICAL["hr_bpm"]
    assert alert.frame_timestamp == critical.frame_timestamp
    assert hub.service.counters.dead_lettered == 0


def test_redelivered_result_alerts_once(rabbit_node, hub, edge_scorer, tmp_path: Path) -> None:
    device = unique("amb")
    local = make_agent(
        device, rabbit_node.mqtt_port, tmp_path / "outbox.sqlite", edge_scorer, hub.hospital_id
    )
    try:
        local.uplink.start()
        result = local.agent.handle_frame("incident-1", CRITICAL)
        assert local.pump_until_delivered(15)
        # The same row published again, as after a restart that lost the PUBACK.
        assert wait_until(lambda: local.uplink.connected, 5)
        local.uplink.publish(local.agent.topic, result.model_dump_json())
        assert wait_until(
            lambda: hub.service.counters.duplicates >= 1, 15, step=lambda: local.agent.pump(0.05)
        )
    finally:
        local.close()

    alerts = read_queue(rabbit_node.amqp_port, hospital_queue(hub.hospital_id))
    assert len(alerts) == 1
    assert (device, 0) in hub.store.result_keys()


def test_engine_process_alerts_once(
    rabbit_node, hub_scorer, edge_scorer, store_url: str, tmp_path: Path
) -> None:
    """The production set-up: parsing, scoring and storing in the hub's worker process."""
    from .conftest import start_hub

    hospital = unique("hospital")
    running = start_hub(rabbit_node.amqp_port, hub_scorer, store_url, hospital, engine_process=True)
    device = unique("amb")
    local = make_agent(device, rabbit_node.mqtt_port, tmp_path / "outbox.sqlite", edge_scorer, hospital)
    try:
        assert running.service.ready.wait(120), "hub with an engine process did not start"
        local.uplink.start()
        result = local.agent.handle_frame("incident-1", CRITICAL)
        local.agent.handle_frame("incident-2", NORMAL)
        assert local.pump_until_delivered(20)
        local.uplink.publish(local.agent.topic, result.model_dump_json())  # a duplicate
        assert wait_until(
            lambda: running.service.counters.duplicates >= 1, 20, step=lambda: local.agent.pump(0.05)
        )
        assert wait_until(lambda: running.store.counts().get("alerts_delivered", 0) == 1, 20)
    finally:
        local.close()
        running.shutdown()

    assert running.store.result_keys() == {(device, 0), (device, 1)}
    alerts = [
        parse_message(HospitalAlert, body)
        for _, body, _ in read_queue(rabbit_node.amqp_port, hospital_queue(hospital))
    ]
    assert [alert.sequence for alert in alerts] == [0]
    # The worker's metrics reach the main process's registry.
    assert running.service.metrics.registry.get_sample_value("hub_results_stored_total") == 2
