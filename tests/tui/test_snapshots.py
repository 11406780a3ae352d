"""Snapshots of the main screens (pytest-textual-snapshot): online, offline, night, and the destination list.

Times are fixed by a fake clock and shown in UTC, and the terminal size is fixed, so a snapshot
changes only when the screen does. After a deliberate change of the screen, review the new pictures
and accept them with `pytest tests/tui --snapshot-update`.
"""

from __future__ import annotations

from datetime import UTC
from pathlib import Path

import pytest
from textual.pilot import Pilot

from tests.tui.conftest import FakeClock, settings_for
from tui.app import AmbulanceTerminal

SIZE = (120, 40)


@pytest.fixture(autouse=True)
def colours(monkeypatch: pytest.MonkeyPatch) -> None:
    """Draw in colour even where NO_COLOR is set, since the snapshots are in colour."""
    monkeypatch.delenv("NO_COLOR", raising=False)


def terminal(path: Path, **settings: object) -> AmbulanceTerminal:
    return AmbulanceTerminal(settings_for(path, **settings), clock=FakeClock(), tz=UTC)


async def first_read(pilot: Pilot) -> None:
    app = pilot.app
    assert isinstance(app, AmbulanceTerminal)
    for _ in range(250):
        if app.view.problem is None:
            break
        await pilot.pause(0.02)
    assert app.view.problem is None, app.view.problem


def test_main_screen_online(snap_compare, online_outbox: Path) -> None:
    """Online: KTAS 2 sepsis, two results on their way, one pre-alert acknowledged after escalation."""
    assert snap_compare(terminal(online_outbox), terminal_size=SIZE, run_before=first_read)


def test_offline_view(snap_compare, offline_outbox: Path) -> None:
    """Offline: the banner shows how many results wait, and a warning waits for acknowledgement."""
    assert snap_compare(terminal(offline_outbox), terminal_size=SIZE, run_before=first_read)


def test_night_view(snap_compare, online_outbox: Path) -> None:
    """The high-contrast night theme, switched on with `t`."""
    assert snap_compare(terminal(online_outbox), press=["t"], terminal_size=SIZE, run_before=first_read)


def test_destination_dialog(snap_compare, online_outbox: Path) -> None:
    """The destination list opened with `d`, the current destination highlighted."""
    assert snap_compare(terminal(online_outbox), press=["d"], terminal_size=SIZE, run_before=first_read)
