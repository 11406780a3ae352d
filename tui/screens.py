"""Modal dialogs for the keyboard alone: number keys or arrows and Enter choose, Escape cancels."""

from __future__ import annotations

from dataclasses import dataclass

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.events import Key
from textual.markup import escape
from textual.screen import ModalScreen
from textual.widgets import Input, Label, OptionList
from textual.widgets.option_list import Option

from tui.settings import Hospital

PREALERT_NOTE_MAX = 280  # TriageResult.crew_note's limit


@dataclass(frozen=True)
class DestinationChoice:
    hospital_id: str | None  # None leaves the choice to the hub


class ConfirmScreen(ModalScreen[bool]):
    """A yes/no question: y or Enter confirms, n or Escape cancels."""

    BINDINGS = [
        Binding("y,enter", "answer(True)", "Yes"),
        Binding("n,escape", "answer(False)", "No"),
    ]

    def __init__(self, question: str, detail: str = ""):
        super().__init__()
        self.question = question
        self.detail = detail

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(f"[b]{escape(self.question)}[/]", classes="dialog-title")
            if self.detail:
                yield Label(escape(self.detail))
            yield Label("[b reverse] y [/] yes    [b reverse] n [/] no", classes="dialog-keys")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class DestinationScreen(ModalScreen[DestinationChoice | None]):
    """Choose the destination hospital: a number key picks at once, arrows and Enter also work."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, hospitals: tuple[Hospital, ...], current: str | None):
        super().__init__()
        # Number keys 1-9 pick a hospital, and 0 leaves the choice to the hub.
        self.choices: list[DestinationChoice] = [DestinationChoice(None)] + [
            DestinationChoice(hospital.id) for hospital in hospitals[:9]
        ]
        self.hospitals = hospitals[:9]
        self.current = current

    def compose(self) -> ComposeResult:
        options = [Option(self._option_text(0, "Hub’s choice (nearest able hospital)", None))]
        for number, hospital in enumerate(self.hospitals, start=1):
            options.append(Option(self._option_text(number, f"{hospital.name} ({hospital.id})", hospital.id)))
        with Vertical(classes="dialog"):
            yield Label("[b]Destination hospital[/]", classes="dialog-title")
            yield OptionList(*options, id="destinations")
            yield Label(
                "[b reverse] 0-9 [/] choose  [b reverse] ↑↓ [/] move  [b reverse] Enter [/] choose  "
                "[b reverse] Esc [/] cancel",
                classes="dialog-keys",
            )

    def _option_text(self, number: int, text: str, hospital_id: str | None) -> str:
        marker = "  ◀ now" if hospital_id == self.current else ""
        return f"[b]{number}[/]  {escape(text)}{marker}"

    def on_mount(self) -> None:
        options = self.query_one(OptionList)
        ids = [choice.hospital_id for choice in self.choices]
        options.highlighted = ids.index(self.current) if self.current in ids else 0
        options.focus()

    def on_key(self, event: Key) -> None:
        if event.character is not None and event.character.isdigit():
            number = int(event.character)
            if number < len(self.choices):
                event.stop()
                self.dismiss(self.choices[number])

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self.dismiss(self.choices[event.option_index])

    def action_cancel(self) -> None:
        self.dismiss(None)


class PrealertScreen(ModalScreen[str | None]):
    """Send a pre-alert now, with a short note for the hospital: Enter sends, Escape cancels."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, incident_id: str | None, hospital: str | None):
        super().__init__()
        self.incident_id = incident_id
        self.hospital = hospital

    def compose(self) -> ComposeResult:
        incident = escape(self.incident_id) if self.incident_id else "the newest incident"
        hospital = escape(self.hospital) if self.hospital else "the hub’s choice of hospital"
        with Vertical(classes="dialog"):
            yield Label("[b]Send a pre-alert now[/]", classes="dialog-title")
            yield Label(f"For incident [b]{incident}[/] to {hospital}, with the newest vitals.")
            yield Input(
                placeholder="short note for the hospital (optional)",
                max_length=PREALERT_NOTE_MAX,
                id="prealert-note",
            )
            yield Label("[b reverse] Enter [/] send  [b reverse] Esc [/] cancel", classes="dialog-keys")

    def on_mount(self) -> None:
        self.query_one(Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.dismiss(event.value.strip())

    def action_cancel(self) -> None:
        self.dismiss(None)
