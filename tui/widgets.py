"""The terminal's panels. Each renders an `AgentView` it is handed and reads nothing itself."""

from __future__ import annotations

from datetime import datetime, tzinfo

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.markup import escape
from textual.widgets import Digits, Label, Sparkline, Static

from models.scores import QSOFA_POSITIVE, SHOCK_INDEX_ABNORMAL
from protocol import TriageResult, VitalsFrame
from tui.journey import Journey
from tui.reader import COMMAND_DONE, COMMAND_FAILED, COMMAND_NEW, AgentView, CommandStatus

# KTAS level names. KTAS is a localized modification of the Canadian Triage and Acuity Scale (Jeong J.
# J Korean Soc Emerg Med 2019;30(4):293-295), so the colours are CTAS's: 1 blue, 2 red, 3 yellow,
# 4 green, 5 white. The CSS classes `-ktas-N` in terminal.tcss carry them, and the block always shows
# the number and the name as well.
# NOTE: the CTAS colours are taken from common triage charts, not checked against the CTAS guideline
# text; have a clinical lead confirm them before use.
KTAS_NAMES = {
    1: "RESUSCITATION",
    2: "EMERGENCY",
    3: "URGENT",
    4: "LESS URGENT",
    5: "NON-URGENT",
}

# NEWS2 parameter names (models.scores.NEWS2_PARAMETERS) as the crew reads them.
NEWS2_LABELS = {
    "respiration_rate": "RR",
    "spo2": "SpO2",
    "air_or_oxygen": "O2",
    "systolic_bp": "SBP",
    "pulse": "HR",
    "consciousness": "ACVPU",
    "temperature": "Temp",
}

# The vitals with a trend line: frame field, label, unit, NEWS2 parameter that scores it.
TRENDS = (
    ("hr_bpm", "HR", "/min", "pulse"),
    ("rr_per_min", "RR", "/min", "respiration_rate"),
    ("spo2_pct", "SpO2", "%", "spo2"),
    ("sbp_mmhg", "BP", "mmHg", "systolic_bp"),
)

# The same colours for the journey table's KTAS cells (Rich styles; the block's are in terminal.tcss).
KTAS_STYLES = {
    1: "bold white on #0044cc",
    2: "bold white on #cc0000",
    3: "bold black on #ffd500",
    4: "bold white on #007a33",
    5: "bold black on white",
}

NO_VALUE = "—"
NO_DIGITS = "--"  # Digits draws ASCII hyphens only


def clock_time(moment: datetime | None, tz: tzinfo | None) -> str:
    """HH:MM:SS in the terminal's time zone (the machine's when `tz` is None)."""
    if moment is None:
        return NO_VALUE
    return moment.astimezone(tz).strftime("%H:%M:%S")


def age(seconds: float) -> str:
    """Format a duration in seconds as a short, plain age: 12 s, 3 min, 2 h."""
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.0f} h"


def _number(value: float | None, digits: int = 0) -> str:
    if value is None:
        return NO_VALUE
    return f"{value:.{digits}f}"


class StatusBar(Static):
    """One line that is always there: ambulance, connectivity, outbox depth, model, destination, time."""

    def show(self, view: AgentView, now: datetime, tz: tzinfo | None, stale_after_s: float) -> None:
        depth = view.depth
        parts = [f"[b]{escape(view.device_id or 'no agent')}[/]", clock_time(now, tz)]
        if view.problem:
            parts.append("[b $error]NO AGENT[/]")
        elif view.offline:
            parts.append("[b $error]● OFFLINE[/]")  # the banner shows since when
        else:
            since = f" since {clock_time(view.link_since, tz)}" if view.link_since else ""
            parts.append(f"[b $success]● ONLINE[/]{since}")
        waiting = f"[b]{depth.pending}[/] waiting"
        if depth.pending_urgent:
            waiting += f" ([b $error]{depth.pending_urgent} urgent[/])"
        capacity = f"{depth.rows:,}/{depth.max_rows:,} rows" if depth.max_rows else f"{depth.rows:,} rows"
        parts.append(f"outbox {waiting} · {capacity}")
        if depth.evicted:
            parts.append(f"[b $warning]{depth.evicted} evicted[/]")
        if view.last_result_at is not None:
            silent_s = (now - view.last_result_at).total_seconds()
            if silent_s >= stale_after_s:
                # NOTE: the agent records a clean stop but writes no heartbeat, so a long gap between
                # results is the only sign of an agent that crashed or hangs.
                parts.append(f"[b $warning]no new result for {age(silent_s)}[/]")
        parts.append(escape(view.scorer_mode or "model unknown"))
        parts.append(f"to [b]{escape(view.destination_hospital_id or 'hub’s choice')}[/]")
        self.update(" │ ".join(parts))


AGENT_STOPPED = "agent stopped"  # the link detail an edge agent records when it stops


class OfflineBanner(Static):
    """A large, plain statement when the agent is offline or absent; hidden otherwise."""

    def show(self, view: AgentView, tz: tzinfo | None) -> None:
        depth = view.depth
        if view.problem:
            self.display = True
            self.update(f"[b]NO AGENT[/]\n{escape(view.problem)}")
            return
        self.display = view.offline
        if not view.offline:
            return
        results = "result" if depth.pending == 1 else "results"
        if view.link_detail == AGENT_STOPPED:
            # Not lost coverage: nothing is scored or sent until someone starts the agent again.
            self.update(
                f"[b]AGENT NOT RUNNING — {depth.pending} {results} waiting ({depth.pending_urgent} urgent)[/]\n"
                f"The edge agent stopped at {clock_time(view.link_since, tz)}. Start it again to score "
                "and send; waiting results are kept."
            )
            return
        headline = f"OFFLINE — {depth.pending} {results} waiting ({depth.pending_urgent} urgent)"
        if view.link is None:
            cause = "The agent has not reached the broker since it started."
        else:
            cause = f"No link since {clock_time(view.link_since, tz)}"
            cause += f" ({view.link_detail})." if view.link_detail else "."
        self.update(
            f"[b]{headline}[/]\nEvery result is kept on the ambulance and sent when coverage returns.\n"
            f"{escape(cause)}"
        )


class WarningBar(Static):
    """The oldest warning not yet acknowledged, with the key that acknowledges it."""

    def show(self, view: AgentView, tz: tzinfo | None) -> None:
        self.display = bool(view.warnings)
        if not view.warnings:
            return
        warning = view.warnings[0]
        more = f"  (+{len(view.warnings) - 1} more)" if len(view.warnings) > 1 else ""
        self.update(
            f"[b]⚠ WARNING {clock_time(warning.at, tz)}[/] {escape(warning.text)}  "
            f"[b reverse] a [/] acknowledge{more}"
        )


class AcuityBlock(Vertical):
    """The final KTAS level as a large number on its level's colour."""

    def compose(self) -> ComposeResult:
        yield Label("KTAS", id="acuity-title")
        yield Digits(NO_DIGITS, id="acuity-number")
        yield Label("no result yet", id="acuity-name")
        yield Label("", id="acuity-note")

    def show(self, result: TriageResult | None) -> None:
        for level in KTAS_NAMES:
            self.set_class(result is not None and result.acuity == level, f"-ktas-{level}")
        self.set_class(result is None, "-ktas-none")
        if result is None:
            self.query_one("#acuity-number", Digits).update(NO_DIGITS)
            self.query_one("#acuity-name", Label).update("no result yet")
            self.query_one("#acuity-note", Label).update("")
            return
        self.query_one("#acuity-number", Digits).update(str(result.acuity))
        self.query_one("#acuity-name", Label).update(KTAS_NAMES[result.acuity])
        notes = []
        if result.is_urgent:
            # KTAS 1-2 is urgent: the hub alerts a hospital unless the incident already has an alert.
            notes.append("PRE-ALERT DUE")
        if result.acuity_floor_applied:
            notes.append("NEWS2 floor")
        self.query_one("#acuity-note", Label).update("\n".join(notes))


class VitalRow(Horizontal):
    """One vital sign: its name, the newest value in large digits, its range and its trend."""

    def __init__(self, field_name: str, label: str, unit: str, parameter: str):
        super().__init__(id=f"vital-{field_name}", classes="vital")
        self.field_name = field_name
        self.label = label
        self.unit = unit
        self.parameter = parameter

    def compose(self) -> ComposeResult:
        yield Label(f"[b]{self.label}[/]\n{self.unit}", classes="vital-label")
        yield Digits(NO_DIGITS, classes="vital-value")
        yield Label("", classes="vital-range")
        yield Sparkline([], classes="vital-trend")

    def show(self, result: TriageResult | None) -> None:
        values = [] if result is None else _series(result.window, self.field_name)
        newest = None if result is None else getattr(result.window[-1], self.field_name)
        self.query_one(Digits).update(NO_DIGITS if newest is None else f"{newest:.0f}")
        extra = []
        if self.field_name == "sbp_mmhg" and result is not None:
            extra.append(f"/{_number(result.window[-1].dbp_mmhg)} dia")
        if len(values) > 1:
            extra.append(f"{min(values):.0f}–{max(values):.0f}")
        if values:
            extra.append("1 reading" if len(values) == 1 else f"{len(values)} readings")
        self.query_one(".vital-range", Label).update("\n".join(extra))
        # Sparkline draws a single value as a full bar, which reads as a maximum: show no trend instead.
        self.query_one(Sparkline).data = values if len(values) > 1 else []
        score = 0 if result is None else result.news2.subscores.get(self.parameter, 0)
        self.set_class(score >= 3, "-red")
        self.set_class(0 < score < 3, "-amber")


def _series(window: list[VitalsFrame], field_name: str) -> list[float]:
    return [value for frame in window if (value := getattr(frame, field_name)) is not None]


class FrameLine(Static):
    """The newest frame's other readings and its age."""

    def show(self, result: TriageResult | None, now: datetime, tz: tzinfo | None) -> None:
        if result is None:
            self.update("")
            return
        frame = result.window[-1]
        level = frame.consciousness.value if frame.consciousness else NO_VALUE
        gcs = f" (GCS {frame.gcs})" if frame.gcs is not None else ""
        oxygen = {True: "on O2", False: "on air", None: "O2 not recorded"}[frame.supplemental_oxygen]
        taken = (now - frame.timestamp).total_seconds()
        self.update(
            f"Temp [b]{_number(frame.temp_c, 1)}[/] °C · ACVPU [b]{level}[/]{gcs} · {oxygen} · "
            f"vitals at {clock_time(frame.timestamp, tz)} ({age(taken)} ago)"
        )


class TriagePanel(Static):
    """Emergency type, confidence, NEWS2 with what scored, qSOFA, shock index and the model."""

    def show(self, view: AgentView, tz: tzinfo | None) -> None:
        result = view.result
        if result is None:
            if view.result_problem:
                self.update(f"[b $error]{escape(view.result_problem)}[/]")
            elif view.incident_id:
                self.update(f"Incident [b]{escape(view.incident_id)}[/]: waiting for the first vitals")
            else:
                self.update("No triage result yet: waiting for the first vitals")
            return
        scores = result.scores
        confidence = scores.emergency_type_probabilities.get(result.emergency_type, 0.0)
        model = f"model {scores.model.version}" if scores.model else "NEWS2 only"
        lines = [
            f"Type [b]{result.emergency_type.value.upper()}[/] {confidence:.0%} · {model}: KTAS "
            f"{scores.model_acuity}, urgent {scores.urgent_probability:.0%}"
            + (" · [b]NEWS2 floor applied[/]" if result.acuity_floor_applied else ""),
            _news2_line(result),
            _risk_line(result),
            f"Incident [b]{escape(result.incident_id)}[/] · result {result.sequence} at "
            f"{clock_time(result.created_at, tz)}"
            + (" · [b]crew pre-alert[/]" if result.crew_prealert else "")
            + (f": “{escape(result.crew_note)}”" if result.crew_note else ""),
        ]
        self.update("\n".join(lines))


def _news2_line(result: TriageResult) -> str:
    news2 = result.news2
    scored = [
        f"{NEWS2_LABELS.get(name, name)} {score}"
        for name, score in news2.subscores.items()
        if score > 0  # the parameters that scored
    ]
    line = f"NEWS2 [b]{news2.total}[/]"
    line += f" ({', '.join(scored)})" if scored else " (nothing scored)"
    if news2.red_parameters:
        red = ", ".join(NEWS2_LABELS.get(name, name) for name in news2.red_parameters)
        line += f" · [b $error]red: {red}[/]"
    if news2.missing:
        line += f" · not measured: {', '.join(NEWS2_LABELS.get(name, name) for name in news2.missing)}"
    return line


def _risk_line(result: TriageResult) -> str:
    if result.qsofa is None:
        qsofa = f"qSOFA {NO_VALUE}"
    elif result.qsofa >= QSOFA_POSITIVE:
        qsofa = f"qSOFA [b $error]{result.qsofa} positive[/]"
    else:
        qsofa = f"qSOFA [b]{result.qsofa}[/]"
    if result.shock_index is None:
        shock = f"shock index {NO_VALUE}"
    elif result.shock_index >= SHOCK_INDEX_ABNORMAL:
        shock = f"shock index [b $error]{result.shock_index:.2f}[/]"
    else:
        shock = f"shock index [b]{result.shock_index:.2f}[/]"
    parts = [qsofa, shock]
    if result.scores.deterioration_risk is not None:
        parts.append(f"deterioration risk {result.scores.deterioration_risk:.0%}")
    return " · ".join(parts)


class JourneyPanel(Static):
    """The newest results and where each one is on its way to the hospital."""

    def show(self, view: AgentView, tz: tzinfo | None) -> None:
        table = Table(
            title="Pre-alert journey, newest first: when it was queued, then how long each stage took "
            "(* the crew's pre-alert)",
            title_justify="left",
            title_style="bold",
            expand=True,
            box=None,
            padding=(0, 1),
            header_style="bold",
        )
        table.add_column("#", width=5, no_wrap=True)
        table.add_column("KTAS", width=4, no_wrap=True)
        table.add_column("queued", width=8, no_wrap=True)
        # Later stages show the time taken since "queued", which is what the crew needs to know.
        for name in ("sent", "broker", "hub", "hospital", "ack"):
            table.add_column(name, width=8 if name == "hospital" else 6, no_wrap=True)
        table.add_column("where it is now", ratio=3, no_wrap=True, overflow="ellipsis")
        table.add_column("incident", width=14, no_wrap=True, overflow="ellipsis")
        for journey in view.journeys:
            table.add_row(*_journey_cells(journey, view.offline, tz))
        if not view.journeys:
            table.add_row("", "", "", "", "", "", "", "", "no results yet", "")
        self.update(table)


def _journey_cells(journey: Journey, offline: bool, tz: tzinfo | None) -> list[Text | str]:
    row = journey.row
    acuity = Text(f" {row.acuity} ", style=KTAS_STYLES.get(row.acuity, "bold"))
    status = Text(journey.status(offline))
    if journey.stage == "acknowledged":
        status.stylize("bold")
    return [
        str(row.sequence) + ("*" if row.crew_prealert else ""),
        acuity,
        clock_time(row.created_at, tz),
        _after(row.created_at, row.sent_at),
        _after(row.created_at, row.confirmed_at),
        _after(row.created_at, journey.hub_at),
        _after(row.created_at, journey.hospital_at),
        _after(row.created_at, journey.acknowledged_at),
        status,
        row.incident_id,
    ]


def _after(start: datetime, moment: datetime | None) -> str:
    if moment is None:
        return NO_VALUE
    return "+" + age((moment - start).total_seconds())


COMMAND_LABELS = {
    "new_incident": "New incident",
    "set_destination": "Destination",
    "manual_prealert": "Pre-alert",
}


def describe_command(command: CommandStatus, now: datetime, timeout_s: float) -> str:
    """Describe the outcome of the newest command in one line of markup."""
    label = COMMAND_LABELS.get(command.kind, command.kind)
    detail = escape(command.detail or "")
    if command.state == COMMAND_DONE:
        return f"[b $success]✓ {label}[/]: {detail}"
    if command.state == COMMAND_FAILED:
        return f"[b $error]✗ {label} failed[/]: {detail}"
    if command.state == COMMAND_NEW:
        waited = 0.0 if command.created_at is None else (now - command.created_at).total_seconds()
        if waited >= timeout_s:
            return (
                f"[b $error]✗ {label}: no edge agent took it in {age(waited)}[/]; is the agent running? "
                "It stays queued and runs when the agent starts."
            )
        return f"… {label}: sent to the edge agent, waiting for it"
    return f"{label}: {escape(command.state)} {detail}"
