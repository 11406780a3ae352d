"""The hub's alert policy and the services' configuration checks."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from cloud_hub.config import HubConfig
from cloud_hub.config import load_config as load_hub_config
from cloud_hub.policy import decide
from edge_agent.config import load_config as load_agent_config
from models.features import summarize_window
from models.triage import OperatingPoint, final_acuity, scores_from_outputs
from protocol import Consciousness, EmergencyType, ModelInfo, TriageResult, VitalsFrame
from protocol.settings import ConfigError

NOW = datetime(2026, 1, 1, tzinfo=UTC)
MODEL = ModelInfo(version="test", sha256="0" * 64)
OPERATING_POINT = OperatingPoint(urgent_threshold=0.5)


def frame(**values) -> VitalsFrame:
    base = {"hr_bpm": 80, "rr_per_min": 16, "spo2_pct": 97, "sbp_mmhg": 125, "dbp_mmhg": 75,
            "temp_c": 36.8, "consciousness": Consciousness.ALERT, "supplemental_oxygen": False}  # fmt: skip
    return VitalsFrame(device_id="amb-1", incident_id="inc-1", timestamp=NOW, **{**base, **values})


def scores(level: int, emergency_type: EmergencyType = EmergencyType.CARDIAC, ectopy: float | None = None):
    acuity = [0.02] * 5
    acuity[level - 1] = 0.92
    types = [0.9 if t == emergency_type else 0.02 for t in EmergencyType]
    urgent = 0.9 if level <= 2 else 0.1
    return scores_from_outputs(acuity, urgent, types, OPERATING_POINT, MODEL, ventricular_ectopy=ectopy)


def result_for(window: list[VitalsFrame], edge_level: int) -> TriageResult:
    summary = summarize_window(window)
    edge = scores(edge_level)
    acuity, floor_applied = final_acuity(edge, summary.news2)
    return TriageResult(
        device_id="amb-1", incident_id="inc-1", sequence=3, created_at=NOW, window=window,
        scores=edge, acuity=acuity, acuity_floor_applied=floor_applied,
        emergency_type=edge.emergency_type, news2=summary.news2, inference_ms=1.0,
    )  # fmt: skip


def test_routine_patient_not_alerted() -> None:
    window = [frame()]
    decision = decide(result_for(window, 4), summarize_window(window), scores(4), "h1")
    assert decision.alert is None
    assert decision.acuity == 4


def test_urgent_edge_alerts_with_both_scores() -> None:
    window = [frame()]
    decision = decide(
        result_for(window, 2), summarize_window(window), scores(2, EmergencyType.RESPIRATORY), "h1"
    )
    alert = decision.alert
    assert alert is not None
    assert alert.alert_id == "amb-1-3"
    assert alert.hospital_id == "h1"
    assert alert.acuity == 2
    assert alert.emergency_type == EmergencyType.RESPIRATORY  # the hub's opinion of the type
    assert alert.edge.model == MODEL
    assert alert.hub is not None
    assert not alert.disagreement
    assert "edge model KTAS 2" in alert.reason
    assert "hub model KTAS 2" in alert.reason


def test_reason_lists_models_when_news2_decides() -> None:
    window = [frame(consciousness=Consciousness.PAIN)]
    decision = decide(result_for(window, 4), summarize_window(window), scores(4), "h1")
    assert decision.alert is not None
    assert "edge model KTAS 4" in decision.alert.reason
    assert "hub model KTAS 4" in decision.alert.reason
    assert "NEWS2 3, red: consciousness" in decision.alert.reason


def test_ectopy_strip_raises_routine_patient_to_ktas3() -> None:
    window = [frame()]
    level, floored = final_acuity(scores(4, ectopy=0.8), summarize_window(window).news2, OPERATING_POINT)
    assert level == 3
    assert floored
    level, floored = final_acuity(scores(4, ectopy=0.2), summarize_window(window).news2, OPERATING_POINT)
    assert level == 4
    assert not floored


def test_operating_point_decides_urgency() -> None:
    probabilities = [0.05, 0.15, 0.5, 0.2, 0.1]
    low = scores_from_outputs(probabilities, 0.3, [1 / 6] * 6, OperatingPoint(urgent_threshold=0.25), MODEL)
    high = scores_from_outputs(probabilities, 0.3, [1 / 6] * 6, OperatingPoint(urgent_threshold=0.35), MODEL)
    assert low.model_acuity == 2  # urgent: the likelier of levels 1 and 2
    assert high.model_acuity == 3  # routine: the likelier of levels 3 to 5


def test_disagreement_flagged_and_most_urgent_wins() -> None:
    window = [frame()]
    decision = decide(result_for(window, 4), summarize_window(window), scores(1), "h1")
    assert decision.alert is not None
    assert decision.alert.acuity == 1
    assert decision.alert.disagreement


def test_news2_floor_alerts_even_when_models_say_routine() -> None:
    window = [frame(consciousness=Consciousness.PAIN, rr_per_min=28, spo2_pct=90)]
    decision = decide(result_for(window, 5), summarize_window(window), scores(5), "h1")
    assert decision.alert is not None
    assert decision.alert.acuity == 2
    assert "NEWS2" in decision.alert.reason
    assert "red: " in decision.alert.reason


def test_reason_names_positive_qsofa_and_shock_index() -> None:
    window = [frame(hr_bpm=120, sbp_mmhg=95, rr_per_min=24)]
    decision = decide(result_for(window, 2), summarize_window(window), scores(2), "h1")
    assert decision.alert is not None
    assert decision.alert.qsofa == 2
    assert "qSOFA 2 (sepsis screen positive)" in decision.alert.reason
    assert "shock index 1.26 (circulatory shock)" in decision.alert.reason
    calm = decide(result_for([frame()], 2), summarize_window([frame()]), scores(2), "h1")
    assert calm.alert is not None
    assert "qSOFA" not in calm.alert.reason
    assert "shock index" not in calm.alert.reason


def test_alert_without_hub_model_uses_edge_scores() -> None:
    window = [frame()]
    decision = decide(result_for(window, 1), summarize_window(window), None, "h1")
    assert decision.alert is not None
    assert decision.alert.hub is None
    assert decision.hub_acuity is None


def test_hub_config_rejects_unknown_default_hospital() -> None:
    with pytest.raises(ConfigError, match="default_hospital_id 'nowhere' is not among hospitals"):
        load_hub_config(None, {"hospitals": ["h1"], "default_hospital_id": "nowhere"})


def test_hub_config_defaults_to_first_hospital() -> None:
    config = HubConfig.model_validate({"hospitals": ["h1", "h2"]})
    assert config.default_hospital_id == "h1"


def test_config_file_errors_name_setting_and_value(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('device_id = "amb/1"\noutbox_path = "x.sqlite"\n[mqtt]\nport = 70000\nkeepalive = 3\n')
    with pytest.raises(ConfigError) as error:
        load_agent_config(path)
    message = str(error.value)
    assert "device_id" in message
    assert "'amb/1'" in message
    assert "mqtt.port" in message
    assert "70000" in message
    assert "mqtt.keepalive" in message  # unknown key, not silently ignored


def test_invalid_toml_reported(tmp_path: Path) -> None:
    path = tmp_path / "hub.toml"
    path.write_text("store_url = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_hub_config(path)


def test_cli_overrides_file(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('device_id = "amb-1"\noutbox_path = "x.sqlite"\n[mqtt]\nport = 1883\n')
    config = load_agent_config(path, {"mqtt": {"port": 1999, "host": None}})
    assert config.mqtt.port == 1999
    assert config.mqtt.host == "127.0.0.1"


def test_example_configs_are_valid() -> None:
    examples = Path(__file__).resolve().parents[2] / "examples"
    agent = load_agent_config(examples / "edge-agent.toml")
    hub = load_hub_config(examples / "hub.toml")
    assert agent.device_id == "amb-01"
    assert [hospital.id for hospital in hub.hospitals] == ["st-marys", "city-general"]


def test_check_config_commands_accept_examples(capsys) -> None:
    from cloud_hub.cli import main as hub_main
    from edge_agent.cli import main as agent_main

    examples = Path(__file__).resolve().parents[2] / "examples"
    assert hub_main(["check-config", str(examples / "hub.toml")]) == 0
    assert "hospitals st-marys, city-general" in capsys.readouterr().out
    assert agent_main(["check-config", str(examples / "edge-agent.toml")]) == 0
    assert "valid configuration for device amb-01" in capsys.readouterr().out


def test_definitions_command_lists_ingress_queues(capsys) -> None:
    import json

    from cloud_hub.cli import main as hub_main

    assert hub_main(["definitions"]) == 0
    definitions = json.loads(capsys.readouterr().out)
    queues = {queue["name"] for queue in definitions["queues"]}
    assert {"hub.triage", "hub.triage.urgent"} <= queues
    keys = {binding["routing_key"] for binding in definitions["bindings"]}
    assert {"ambulance.*.triage", "ambulance.*.urgent"} <= keys


def test_backup_error_names_value_only(tmp_path: Path) -> None:
    path = tmp_path / "hub.toml"
    path.write_text('[[hospitals]]\nid = "a"\nbackup_hospital_id = "b"\n', encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_hub_config(path)
    message = str(caught.value)
    assert "backup_hospital_id 'b' is not among" in message
    assert "got {" not in message


def test_missing_field_error_omits_input() -> None:
    with pytest.raises(ConfigError) as error:
        load_agent_config(None, {"device_id": "amb-1"})
    assert "outbox_path: Field required" in str(error.value)
    assert "got" not in str(error.value)


def test_agent_position_needs_both_coordinates() -> None:
    with pytest.raises(ConfigError, match="both latitude and longitude"):
        load_agent_config(None, {"device_id": "amb-1", "outbox_path": "x.sqlite", "latitude": 51.5})


def test_agent_position_from_command_line(tmp_path: Path) -> None:
    from edge_agent.cli import _overrides, _parser

    args = _parser().parse_args(
        [
            "run",
            "--device-id",
            "amb-1",
            "--outbox",
            str(tmp_path / "x.sqlite"),
            "--position",
            "51.5072,-0.1276",
        ]
    )
    config = load_agent_config(None, _overrides(args))
    assert config.position is not None
    assert config.position.latitude == 51.5072
    assert config.position.longitude == -0.1276


def test_agent_position_invalid_text_rejected() -> None:
    from edge_agent.cli import _parser

    with pytest.raises(SystemExit):
        _parser().parse_args(["run", "--position", "north"])
