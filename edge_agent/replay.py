"""Replay of recorded real patients as a live stream of vitals frames.

Two sources:
- `ktas`: emergency-department visits that arrived by ambulance (KTAS data set, arrival mode 2 or 4).
  The data holds one set of vital signs per visit, so each visit becomes one incident with one frame.
- `physionet`: ICU stays of the PhysioNet 2012 challenge as time series. Each stay is an incident;
  each recorded measurement time becomes a frame holding the values measured then, with recorded time
  compressed by `speed` (3600 plays one recorded hour per second).

A source yields `ScheduledFrame`s whose `at_s` is the offset from the start of the replay; the agent
stamps each frame with the wall-clock time at which it plays it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import cycle, islice
from pathlib import Path
from typing import Any

from models.data_paths import DATA_DIR_ENV, KTAS_FILE, PHYSIONET_DIR, default_data_dir
from models.ktas import KtasVisit, load_ktas
from models.physionet import IcuStay, load_stay, stay_files

log = logging.getLogger(__name__)

__all__ = ["ScheduledFrame", "default_data_dir", "ktas_frames", "open_source", "physionet_frames"]


@dataclass(frozen=True)
class ScheduledFrame:
    at_s: float  # seconds after the replay started
    incident_id: str
    values: dict[str, Any]  # VitalsFrame fields other than device, incident and timestamp


def ktas_frames(
    visits: list[KtasVisit],
    *,
    start: int = 0,
    interval_s: float = 2.0,
    ambulance_only: bool = True,
) -> Iterator[ScheduledFrame]:
    """Yield one frame per visit, `interval_s` apart, starting at the `start`-th selected visit.

    The selection wraps around, so a long replay cycles through the visits again (each time as new
    incidents).
    """
    selected = [visit for visit in visits if visit.arrived_by_ambulance or not ambulance_only]
    if not selected:
        raise ValueError("no KTAS visits to replay; check the data file")
    rotation = selected[start % len(selected) :] + selected[: start % len(selected)]
    for number, visit in enumerate(cycle(rotation)):
        yield ScheduledFrame(
            at_s=number * interval_s,
            incident_id=f"ktas-{visit.row_number}-{number // len(rotation)}",
            values=visit.frame_values(),
        )


def physionet_frames(
    stays: list[IcuStay], *, speed: float = 3600.0, gap_s: float = 2.0
) -> Iterator[ScheduledFrame]:
    """Yield each stay's measurements in recorded order, time compressed by `speed`, stays in turn."""
    if speed <= 0:
        raise ValueError(f"replay speed must be positive, got {speed}")
    offset_s = 0.0
    for stay in stays:
        context = stay.context().model_dump()
        last_s = offset_s
        for minute, measured in stay.timeline():
            values: dict[str, Any] = dict(measured)
            values["context"] = context
            values["source"] = (
                f"physionet-2012 record {stay.record_id} at {minute // 60:02d}:{minute % 60:02d}"
            )
            last_s = offset_s + minute * 60 / speed
            yield ScheduledFrame(at_s=last_s, incident_id=f"icu-{stay.record_id}", values=values)
        offset_s = last_s + gap_s


def open_source(
    kind: str,
    data_dir: Path,
    *,
    start: int = 0,
    interval_s: float = 2.0,
    speed: float = 3600.0,
    stays: int = 3,
) -> Iterator[ScheduledFrame]:
    """Open a replay source by name: `ktas` or `physionet`."""
    if kind == "ktas":
        path = data_dir / KTAS_FILE
        if not path.is_file():
            raise FileNotFoundError(f"KTAS file {path} not found; set --data-dir or {DATA_DIR_ENV}")
        data = load_ktas(path)
        log.info("replaying KTAS ambulance arrivals from %s, starting at visit %d", path, start)
        return ktas_frames(data.visits, start=start, interval_s=interval_s)
    if kind == "physionet":
        folder = data_dir / PHYSIONET_DIR
        files = stay_files(folder)
        if not files:
            raise FileNotFoundError(f"no PhysioNet stays in {folder}; set --data-dir or {DATA_DIR_ENV}")
        chosen = [load_stay(path) for path in islice(files[start:], stays)]
        log.info(
            "replaying %d PhysioNet 2012 stays from %s at %.0fx speed",
            len(chosen), folder, speed,
        )  # fmt: skip
        return physionet_frames(chosen, speed=speed)
    raise ValueError(f"unknown replay source {kind!r}; use 'ktas' or 'physionet'")
