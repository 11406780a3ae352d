"""`ambulance-terminal`: the crew's screen in the back of the ambulance.

ambulance-terminal --outbox /var/lib/edge/outbox.sqlite [--hub-config hub.toml] [--night]

It attaches to a running edge agent through the agent's outbox file. A worker thread reads the file
every `poll_interval_s` and hands the screen an `AgentView`. The crew's actions queue commands in the
same file, also from worker threads. Nothing touches SQLite on the event loop, and everything works
without coverage, because the agent and its outbox are on the ambulance.
"""

from __future__ import annotations

import argparse
import logging
import sqlite3
import sys
import threading
from collections.abc import Sequence
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Any

from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.markup import escape
from textual.message import Message
from textual.screen import ModalScreen
from textual.theme import Theme
from textual.widgets import Footer, Static
from textual.worker import get_current_worker

from protocol.settings import ConfigError
from tui.reader import (
    AgentView,
    Clock,
    OutboxReader,
    WarningNote,
    acknowledge_warning,
    queue_command,
    utc_now,
)
from tui.screens import ConfirmScreen, DestinationChoice, DestinationScreen, PrealertScreen
from tui.settings import TerminalSettings, hospitals_from_hub_config, make_settings, parse_hospitals
from tui.widgets import (
    COMMAND_LABELS,
    TRENDS,
    AcuityBlock,
    FrameLine,
    JourneyPanel,
    OfflineBanner,
    StatusBar,
    TriagePanel,
    VitalRow,
    WarningBar,
    describe_command,
)

log = logging.getLogger(__name__)

DAY_THEME = Theme(
    name="ambulance-day",
    primary="#0b57d0",
    secondary="#5f6368",
    accent="#0b57d0",
    warning="#b35c00",
    error="#c5221f",
    success="#137333",
    foreground="#000000",
    background="#ffffff",
    surface="#f1f3f4",
    panel="#e0e0e0",
    dark=False,
)
# High contrast on black for a dark ambulance: white text, saturated status colours, no greys.
NIGHT_THEME = Theme(
    name="ambulance-night",
    primary="#ffb000",
    secondary="#ffffff",
    accent="#ffb000",
    warning="#ffb000",
    error="#ff4040",
    success="#40ff80",
    foreground="#ffffff",
    background="#000000",
    surface="#000000",
    panel="#202020",
    dark=True,
)

REDRAW_INTERVAL_S = 1.0

# Actions that open a dialog or change the agent. None of them runs while a dialog is open.
CREW_ACTIONS = {"new_incident", "destination", "prealert", "acknowledge", "toggle_night", "quit"}


class ViewRead(Message):
    """The poll worker read the outbox."""

    def __init__(self, view: AgentView):
        super().__init__()
        self.view = view


class WriteFinished(Message):
    """A write worker finished; `note` describes the outcome for the crew."""

    def __init__(self, note: str):
        super().__init__()
        self.note = note


class AmbulanceTerminal(App[None]):
    """Live vitals, triage and pre-alert delivery of one ambulance, driven by single keys."""

    CSS_PATH = "terminal.tcss"
    TITLE = "Ambulance terminal"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS = [
        Binding("n", "new_incident", "New incident"),
        Binding("d", "destination", "Destination"),
        Binding("p", "prealert", "Pre-alert"),
        Binding("a", "acknowledge", "Ack warning"),
        Binding("t", "toggle_night", "Night/day"),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(self, settings: TerminalSettings, *, clock: Clock = utc_now, tz: tzinfo | None = None):
        """Set up the app. `clock` gives the time shown and written; `tz` is for display (local when None)."""
        super().__init__()
        self.settings = settings
        self.clock = clock
        self.tz = tz
        self.view = AgentView(
            outbox_path=settings.outbox_path, read_at=clock(), problem="reading the edge agent's outbox"
        )
        self._wake = threading.Event()  # set to read the outbox again at once
        self._note: str | None = None  # the crew's last local action, shown until a newer command
        self._note_command_id: int | None = None

    # --- layout and drawing ----------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield StatusBar(id="status")
        yield OfflineBanner(id="banner")
        yield WarningBar(id="warning")
        with Horizontal(id="patient"):
            yield AcuityBlock(id="acuity")
            with Vertical(id="vitals"):
                for field_name, label, unit, parameter in TRENDS:
                    yield VitalRow(field_name, label, unit, parameter)
                yield FrameLine(id="frame")
        yield TriagePanel(id="triage")
        yield JourneyPanel(id="journey")
        yield Static(id="command-line")
        yield Footer(show_command_palette=False)

    def on_mount(self) -> None:
        self.register_theme(DAY_THEME)
        self.register_theme(NIGHT_THEME)
        self.theme = NIGHT_THEME.name if self.settings.night else DAY_THEME.name
        self._draw()
        self._poll_outbox()
        # Ages, the clock and command time-outs change without a new read.
        self.set_interval(REDRAW_INTERVAL_S, self._draw)

    def on_view_read(self, message: ViewRead) -> None:
        self.view = message.view
        self._draw()

    def on_write_finished(self, message: WriteFinished) -> None:
        self._set_note(message.note)

    def _draw(self) -> None:
        view = self.view
        now = self.clock()
        self.query_one(StatusBar).show(view, now, self.tz, self.settings.stale_after_s)
        self.query_one(OfflineBanner).show(view, self.tz)
        self.query_one(WarningBar).show(view, self.tz)
        self.query_one(AcuityBlock).show(view.result)
        for row in self.query(VitalRow):
            row.show(view.result)
        self.query_one(FrameLine).show(view.result, now, self.tz)
        self.query_one(TriagePanel).show(view, self.tz)
        self.query_one(JourneyPanel).show(view, self.tz)
        self.query_one("#command-line", Static).update(self._command_line(view, now))

    def _command_line(self, view: AgentView, now: datetime) -> str:
        command = view.command
        newer_command = command is not None and command.id != self._note_command_id
        if self._note is not None and not newer_command:
            return self._note
        if command is None:
            return "Keys below; every action also works offline."
        return describe_command(command, now, self.settings.command_timeout_s)

    def _set_note(self, note: str) -> None:
        self._note = note
        self._note_command_id = self.view.command.id if self.view.command else None
        self._draw()

    # --- reading and writing the outbox (worker threads only) ------------------------------------

    @work(thread=True, exclusive=True, group="poll", name="outbox poll")
    def _poll_outbox(self) -> None:
        worker = get_current_worker()
        reader = OutboxReader(
            self.settings.outbox_path, clock=self.clock, journey_rows=self.settings.journey_rows
        )
        shown: AgentView | None = None
        try:
            while not worker.is_cancelled:
                try:
                    view = reader.read()
                except Exception as exc:  # a bug here must not leave stale vitals on screen unnoticed
                    log.exception("reading the outbox failed")
                    reader.close()
                    view = AgentView(
                        outbox_path=self.settings.outbox_path,
                        read_at=self.clock(),
                        problem=f"the terminal failed to read the outbox: {exc}",
                    )
                if view != shown:  # redrawing an unchanged view would only load the event loop
                    self.post_message(ViewRead(view))
                    shown = view
                self._wake.wait(self.settings.poll_interval_s)
                self._wake.clear()
        finally:
            reader.close()

    @work(thread=True, group="write", name="queue command")
    def _write_command(self, kind: str, payload: dict[str, Any]) -> None:
        label = COMMAND_LABELS.get(kind, kind)
        try:
            command_id = queue_command(self.settings.outbox_path, kind, payload, self.clock())
        except sqlite3.Error as exc:
            log.error("command %s could not be queued in %s: %s", kind, self.settings.outbox_path, exc)
            self.post_message(
                WriteFinished(f"[b $error]✗ {label} failed[/]: cannot write the outbox ({escape(str(exc))})")
            )
            return
        log.info("command %d (%s) queued", command_id, kind)
        self._wake.set()

    @work(thread=True, group="write", name="acknowledge warning")
    def _write_acknowledgement(self, warning: WarningNote) -> None:
        try:
            done = acknowledge_warning(self.settings.outbox_path, warning.id, self.clock())
        except sqlite3.Error as exc:
            log.error("warning %d could not be acknowledged: %s", warning.id, exc)
            self.post_message(WriteFinished(f"[b $error]✗ Acknowledging failed[/]: {escape(str(exc))}"))
            return
        note = "[b $success]✓ Warning acknowledged[/]" if done else "That warning was already acknowledged"
        self.post_message(WriteFinished(note))
        self._wake.set()

    def _queue_command(self, kind: str, payload: dict[str, Any]) -> None:
        self._set_note(f"… {COMMAND_LABELS.get(kind, kind)}: writing the command")
        self._write_command(kind, payload)

    # --- the crew's actions ----------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Keep the main screen's keys out of an open dialog."""
        if action in CREW_ACTIONS and isinstance(self.screen, ModalScreen):
            return False
        return True

    def action_new_incident(self) -> None:
        def answered(yes: bool | None) -> None:
            if yes:
                self._queue_command("new_incident", {})

        self.push_screen(
            ConfirmScreen("Start a new incident?", "Vitals from now on go to a new patient record."), answered
        )

    def action_destination(self) -> None:
        def chosen(choice: DestinationChoice | None) -> None:
            if choice is not None:
                self._queue_command("set_destination", {"hospital_id": choice.hospital_id})

        self.push_screen(
            DestinationScreen(self.settings.hospitals, self.view.destination_hospital_id), chosen
        )

    def action_prealert(self) -> None:
        incident_id = self.view.incident_id

        def send(note: str | None) -> None:
            if note is None:
                return
            payload: dict[str, Any] = {"note": note}
            if incident_id is not None:
                payload["incident_id"] = incident_id
            self._queue_command("manual_prealert", payload)

        self.push_screen(PrealertScreen(incident_id, self.view.destination_hospital_id), send)

    def action_acknowledge(self) -> None:
        if not self.view.warnings:
            self._set_note("No warning to acknowledge")
            return
        self._write_acknowledgement(self.view.warnings[0])

    def action_toggle_night(self) -> None:
        night = self.theme != NIGHT_THEME.name
        self.theme = NIGHT_THEME.name if night else DAY_THEME.name

    async def action_quit(self) -> None:
        def answered(yes: bool | None) -> None:
            if yes:
                self._wake.set()
                self.exit()

        self.push_screen(
            ConfirmScreen("Quit the terminal?", "The edge agent keeps running and sending results."), answered
        )


# --- command line ----------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ambulance-terminal", description=__doc__.splitlines()[0].replace("`", "")
    )
    parser.add_argument(
        "--outbox", type=Path, required=True, help="the edge agent's outbox file (its outbox_path)"
    )
    hospitals = parser.add_mutually_exclusive_group()
    hospitals.add_argument(
        "--hospitals", help="destinations to offer: ids separated by commas, each optionally id=Name"
    )
    hospitals.add_argument(
        "--hub-config", type=Path, help="read the destinations from a hub configuration's [[hospitals]]"
    )
    parser.add_argument("--night", action="store_true", help="start with the high-contrast night theme")
    parser.add_argument("--poll-interval", type=float, default=0.5, help="seconds between outbox reads")
    parser.add_argument(
        "--command-timeout", type=float, default=5.0, help="seconds to wait for the agent to take a command"
    )
    parser.add_argument(
        "--log-file", type=Path, help="write the terminal's log here (the screen has no room)"
    )
    parser.add_argument(
        "--log-level", default="INFO", type=str.upper, choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.log_file is not None:
        logging.basicConfig(
            filename=args.log_file,
            level=args.log_level,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
    try:
        values: dict[str, object] = {
            "outbox_path": args.outbox,
            "poll_interval_s": args.poll_interval,
            "command_timeout_s": args.command_timeout,
            "night": args.night,
        }
        if args.hospitals is not None:
            values["hospitals"] = parse_hospitals(args.hospitals)
        elif args.hub_config is not None:
            values["hospitals"] = hospitals_from_hub_config(args.hub_config)
        settings = make_settings(**values)
    except ConfigError as exc:
        print(f"ambulance-terminal: {exc}", file=sys.stderr)
        return 2
    AmbulanceTerminal(settings).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
