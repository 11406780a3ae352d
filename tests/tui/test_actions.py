"""Each crew action through Textual's pilot: the key, the dialog, and what lands in the outbox."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Awaitable, Callable
from datetime import UTC, timedelta
from pathlib import Path

from textual.pilot import Pilot
from textual.widgets import Digits, Static

from edge_agent.outbox import Outbox
from tests.tui.conftest import INCIDENT, FakeClock, build_result, make_outbox, settings_for
from tui.app import DAY_THEME, NIGHT_THEME, AmbulanceTerminal
from tui.screens import ConfirmScreen, DestinationScreen, PrealertScreen
from tui.widgets import OfflineBanner, WarningBar

SIZE = (120, 40)
WAIT_S = 5.0


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), timeout=30))


async def until(pilot: Pilot, condition: Callable[[], bool], what: str) -> None:
    """Let the app run until `condition` holds; the poll and write workers are threads."""
    for _ in range(int(WAIT_S / 0.02)):
        if condition():
            return
        await pilot.pause(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def commands(path: Path) -> list[tuple[str, dict, str]]:
    db = sqlite3.connect(path)
    try:
        rows = db.execute("SELECT kind, payload, state FROM commands ORDER BY id").fetchall()
    finally:
        db.close()
    return [(kind, json.loads(payload), state) for kind, payload, state in rows]


def new_commands(path: Path) -> list[tuple[str, dict, str]]:
    return [command for command in commands(path) if command[2] == "new"]


def terminal(path: Path, clock: FakeClock | None = None, **settings: object) -> AmbulanceTerminal:
    return AmbulanceTerminal(settings_for(path, **settings), clock=clock or FakeClock(), tz=UTC)


async def loaded(pilot: Pilot) -> None:
    app = pilot.app
    assert isinstance(app, AmbulanceTerminal)
    await until(pilot, lambda: app.view.problem is None and app.view.result is not None, "the first read")


def command_line(app: AmbulanceTerminal) -> str:
    return str(app.query_one("#command-line", Static).render())


def test_new_incident_asks_first_then_queues_the_command(online_outbox: Path) -> None:
    async def scenario() -> None:
        app = terminal(online_outbox)
        async with app.run_test(size=SIZE) as pilot:
            await loaded(pilot)
            await pilot.press("n")
            assert isinstance(app.screen, ConfirmScreen)
            await pilot.press("escape")
            assert not isinstance(app.screen, ConfirmScreen)
            await pilot.press("n", "y")
            await until(pilot, lambda: bool(new_commands(online_outbox)), "the command row")
        assert new_commands(online_outbox) == [("new_incident", {}, "new")]

    run(scenario)


def test_destination_by_number_key_and_by_arrows(online_outbox: Path) -> None:
    async def scenario() -> None:
        app = terminal(online_outbox)
        async with app.run_test(size=SIZE) as pilot:
            await loaded(pilot)
            await pilot.press("d")
            assert isinstance(app.screen, DestinationScreen)
            await pilot.press("2")  # City General, the second hospital
            await until(pilot, lambda: len(new_commands(online_outbox)) == 1, "the first command")
            await pilot.press("d", "up", "enter")  # from St Mary's (the current one) up to the hub's choice
            await until(pilot, lambda: len(new_commands(online_outbox)) == 2, "the second command")
            await pilot.press("d", "escape")
            await pilot.pause(0.1)
        assert new_commands(online_outbox) == [
            ("set_destination", {"hospital_id": "city-general"}, "new"),
            ("set_destination", {"hospital_id": None}, "new"),
        ]

    run(scenario)


def test_prealert_note_takes_action_letters(online_outbox: Path) -> None:
    async def scenario() -> None:
        app = terminal(online_outbox)
        async with app.run_test(size=SIZE) as pilot:
            await loaded(pilot)
            await pilot.press("p")
            assert isinstance(app.screen, PrealertScreen)
            # Letters that are keys on the main screen go into the note.
            await pilot.press(*"pt drowsy, needs a bed", "enter")
            await until(pilot, lambda: bool(new_commands(online_outbox)), "the command row")
            await pilot.press("p", "escape")
            await pilot.pause(0.1)
        assert new_commands(online_outbox) == [
            ("manual_prealert", {"note": "pt drowsy, needs a bed", "incident_id": INCIDENT}, "new")
        ]
        assert app.theme == DAY_THEME.name

    run(scenario)


def test_acknowledge_the_shown_warning(offline_outbox: Path) -> None:
    async def scenario() -> None:
        app = terminal(offline_outbox)
        async with app.run_test(size=SIZE) as pilot:
            await loaded(pilot)
            assert app.query_one(WarningBar).display
            await pilot.press("a")
            await until(pilot, lambda: not app.query_one(WarningBar).display, "the warning to go")
            assert "Warning acknowledged" in command_line(app)
            await pilot.press("a")
            assert "No warning to acknowledge" in command_line(app)
        db = sqlite3.connect(offline_outbox)
        acknowledged = db.execute("SELECT acknowledged_at FROM warnings").fetchall()
        db.close()
        assert acknowledged == [(FakeClock().now.isoformat(),)]

    run(scenario)


def test_night_theme_toggles(online_outbox: Path) -> None:
    async def scenario() -> None:
        app = terminal(online_outbox)
        async with app.run_test(size=SIZE) as pilot:
            await loaded(pilot)
            assert app.theme == DAY_THEME.name
            await pilot.press("t")
            assert app.theme == NIGHT_THEME.name
            await pilot.press("t")
            assert app.theme == DAY_THEME.name

    run(scenario)


def test_command_outcome_and_an_agent_that_never_answers(online_outbox: Path) -> None:
    async def scenario() -> None:
        clock = FakeClock()
        app = terminal(online_outbox, clock)
        async with app.run_test(size=SIZE) as pilot:
            await loaded(pilot)
            await pilot.press("n", "y")
            await until(pilot, lambda: "waiting for it" in command_line(app), "the waiting note")

            clock.now += timedelta(seconds=6)
            await until(pilot, lambda: "no edge agent took it" in command_line(app), "the timeout note")

            # The agent's side: take the command and report it done.
            outbox = Outbox(online_outbox, max_rows=1000)
            for command in outbox.take_commands():
                outbox.finish_command(command.id, True, "new incident inc-0314-1001")
            outbox.close()
            await until(pilot, lambda: "✓ New incident" in command_line(app), "the outcome")
            assert "inc-0314-1001" in command_line(app)

    run(scenario)


def test_live_update_when_the_agent_adds_a_result(tmp_path: Path) -> None:
    path = make_outbox(tmp_path / "live.sqlite", online=True)

    async def scenario() -> None:
        app = terminal(path)
        async with app.run_test(size=SIZE) as pilot:
            await loaded(pilot)
            assert app.view.result is not None
            assert app.view.result.sequence == 6
            outbox = Outbox(path, max_rows=1000)
            outbox.add(build_result(0))  # the patient improves: back to KTAS 3
            outbox.record_link("offline", "keepalive timeout")
            outbox.close()
            await until(
                pilot, lambda: app.view.result is not None and app.view.result.sequence == 7, "result 7"
            )
            assert str(app.query_one("#acuity-number", Digits).value) == "3"
            assert app.query_one(OfflineBanner).display
            assert "OFFLINE — 3 results waiting (2 urgent)" in str(app.query_one(OfflineBanner).render())

    run(scenario)


def test_stopped_agent_not_called_offline(online_outbox: Path) -> None:
    async def scenario() -> None:
        app = terminal(online_outbox)
        async with app.run_test(size=SIZE) as pilot:
            await loaded(pilot)
            outbox = Outbox(online_outbox, max_rows=1000)
            outbox.record_link("offline", "agent stopped")
            outbox.close()
            await until(pilot, lambda: app.view.link == "offline", "the stop")
            banner = str(app.query_one(OfflineBanner).render())
            assert "AGENT NOT RUNNING" in banner
            assert "OFFLINE" not in banner

    run(scenario)


def test_missing_outbox_then_appears(tmp_path: Path) -> None:
    path = tmp_path / "later.sqlite"

    async def scenario() -> None:
        app = terminal(path)
        async with app.run_test(size=SIZE) as pilot:
            await until(
                pilot, lambda: app.view.problem is not None and "waiting" in app.view.problem, "a problem"
            )
            assert "NO AGENT" in str(app.query_one(OfflineBanner).render())
            make_outbox(path, online=True)
            await loaded(pilot)
            assert not app.query_one(OfflineBanner).display

    run(scenario)


def test_quit_asks_first(online_outbox: Path) -> None:
    async def scenario() -> None:
        app = terminal(online_outbox)
        async with app.run_test(size=SIZE) as pilot:
            await loaded(pilot)
            await pilot.press("q")
            assert isinstance(app.screen, ConfirmScreen)
            await pilot.press("n")
            assert not isinstance(app.screen, ConfirmScreen)
            await pilot.press("q", "y")
            await pilot.pause(0.1)
        assert app.return_code == 0

    run(scenario)


def test_command_write_failure_is_shown(tmp_path: Path) -> None:
    path = make_outbox(tmp_path / "gone.sqlite", online=True)

    async def scenario() -> None:
        app = terminal(path)
        async with app.run_test(size=SIZE) as pilot:
            await loaded(pilot)
            path.unlink()  # the agent's file vanished (a new disk, a wrong path after a restart)
            await pilot.press("n", "y")
            await until(pilot, lambda: "New incident failed" in command_line(app), "the failure note")
            assert "cannot write the outbox" in command_line(app)

    run(scenario)
