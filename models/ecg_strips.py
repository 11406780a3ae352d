"""Photographed-looking ECG rhythm strips from real records, labelled for ventricular ectopy.

Records, read in place from the `ecg/` folder of the shared data directory:

- MIT-BIH Arrhythmia Database record 100, lead MLII, 360 Hz, 30 min. Beat labels come from the
  cardiologists' reference annotations (`100.atr`). ODC-By 1.0. Moody GB, Mark RG. The impact of the
  MIT-BIH Arrhythmia Database. IEEE Eng Med Biol 20(3):45-50 (2001).
- MIT-BIH record 208, a 5-minute excerpt of lead MLII at 360 Hz (`mitdb-208-excerpt.npz`, key `ecg`,
  uint16, millivolts = (value - 1024) / 200). It comes without annotations, so its beats are detected
  and classified here. Same source and license as record 100.
- PhysioNet/CinC Challenge 2015 record a103l, lead II, 250 Hz, 5.5 min, labelled as a false asystole
  alarm. Beats are detected. Clifford GD et al. The PhysioNet/Computing in Cardiology Challenge 2015:
  reducing false arrhythmia alarms in the ICU. Comput Cardiol 42:273-276 (2015). Open access on
  PhysioNet (challenge-2015 1.0.0). NOTE: the data license of that project was not checked here.
- PTB Diagnostic ECG Database record s0010_re, lead ii, 1 kHz, 38.4 s, acute inferolateral myocardial
  infarction. Beats are detected. ODC-By 1.0. Bousseljot R, Kreiseler D, Schnabel A. Biomed Tech
  40(S1):317 (1995).
- Not loaded: Challenge 2015 record v102s. Its lead II is clipped at +-0.9 mV and its QRS complexes are
  broken up by high-frequency oscillation. About half of its detected beats correlate below 0.6 with the
  record's dominant beat, so neither the beat detection nor the ventricular-beat rule can be trusted there.

Cite PhysioNet with every record: Goldberger AL et al. PhysioBank, PhysioToolkit, and PhysioNet.
Circulation 101(23):e215-e220 (2000).

The edge agent imports this module for `prepare_strip_image`, so only numpy and Pillow are imported at
module level. wfdb and scipy, which the loaders and the beat detector need, are imported inside those
functions.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageOps

log = logging.getLogger(__name__)

# Image size for the Keras model. At the ECG paper standard below, a 10 s strip is 250 mm x 50 mm,
# so 320 x 64 pixels keep the grid squares square (1.28 pixels per mm) and show +-2.5 mV.
STRIP_HEIGHT = 64
STRIP_WIDTH = 320
STRIP_SECONDS = 10.0

# Standard ECG paper: 25 mm/s, 10 mm/mV, minor lines every 1 mm and major lines every 5 mm
# (https://ecgessentials.com/ecg-basics/the-ecg-paper).
PAPER_SPEED_MM_PER_S = 25.0
GAIN_MM_PER_MV = 10.0
MINOR_GRID_MM = 1.0
MAJOR_GRID_MM = 5.0

LABELS_REFERENCE = "reference annotations"
LABELS_DETECTED = "detected"

# MIT-BIH beat annotation symbols, as WFDB's `bxb` counts them (wfdb app/bxb.c, function amap).
# Ventricular ectopic beats are PVC 'V', R-on-T PVC 'r' and ventricular escape 'E'.
# Fusion 'F' is a separate class there and is not counted as ventricular here.
BEAT_SYMBOLS = frozenset("NLRBaJASVrFejnE/fQ")
VENTRICULAR_SYMBOLS = frozenset("VrE")

# A QRS detection matches a reference beat within 0.15 s: the default match window of WFDB's `bxb`,
# the reference implementation of the ANSI/AAMI EC57 beat-by-beat comparison.
MATCH_WINDOW_S = 0.15

# A beat is "fully inside" a strip when this much signal on either side of its fiducial point is inside
# too. A PVC's QRS characteristically lasts more than 0.14 s (Queen's University ECG module, premature
# ventricular complex: https://elentra.healthsci.queensu.ca/assets/modules/ECG/premature_ventricular_complex.html).
BEAT_HALF_WIDTH_S = 0.1

# --- beat detection and the ventricular-beat rule -------------------------------------------------
# Detection runs at 360 Hz, the MIT-BIH rate. With wfdb 4.3, xqrs finds no beat in the 1 kHz PTB record
# at its own rate but finds all 52 after resampling to 360 Hz.
DETECTION_RATE_HZ = 360
# No two beats closer than this: the refractory period that xqrs uses by default (wfdb 4.3).
REFRACTORY_S = 0.2
MIN_LABEL_DURATION_S = 10.0
# Window around each beat's fiducial point in which its shape is compared with the dominant beat.
BEAT_WINDOW_BEFORE_S = 0.15
BEAT_WINDOW_AFTER_S = 0.25
# The fiducial point is the largest deflection within this distance of the detector's mark.
FIDUCIAL_SEARCH_S = 0.06
# A beat whose correlation with the dominant beat's template is below this has an abnormal shape.
# Measured here: 99.9% of record 100's beats correlate at 0.9 or more and its one PVC at -0.7. In the
# 208 excerpt the PVCs cluster at 0.2-0.4 and normal beats above 0.95, with about 80 beats (fusion
# beats among them) spread between.
VENTRICULAR_MAX_CORRELATION = 0.7
# A ventricular beat spreads through the myocardium rather than the conduction system, so its QRS is
# wider than the dominant beat's. Measured on the 208 excerpt: the beats called ventricular are 1.7 to
# 8.3 times as wide as the template and at most 1.3 times as steep. The abnormal beats inside record
# a103l's lead-off artifact are 1.9 to 4.6 times as steep, so steeper ones count as artifacts.
VENTRICULAR_MIN_WIDTH_RATIO = 1.5
ARTIFACT_MIN_SLOPE_RATIO = 1.5
# Width is measured where the slope exceeds this fraction of the template's steepest slope.
WIDTH_SLOPE_FRACTION = 0.1
# Signal loss or clipping: 0.2 s whose peak-to-peak stays under 0.02 mV. None of records 100, 208 and
# s0010_re has such a window, while record a103l has them throughout its 263-316 s artifact.
FLAT_WINDOW_S = 0.2
FLAT_MAX_PEAK_TO_PEAK_MV = 0.02
# A gap between beats longer than both of these marks a span where beats were not found (signal loss,
# amplifier saturation or a real pause), so beat labels are unknown there.
GAP_MIN_S = 1.5
GAP_MIN_RR_RATIO = 2.5
# Beats within this time of an artifact are dropped along with it.
ARTIFACT_MARGIN_S = 1.0

# --- rendering --------------------------------------------------------------------------------------
# The strip is drawn at 4 times its size and averaged down, which anti-aliases the trace and the grid.
# Must be even (see render_strip).
SUPERSAMPLE = 4
# Points drawn per supersampled pixel column (256 Hz for a 10 s, 320 pixel strip).
POINTS_PER_COLUMN = 2
# Paper, grid and ink colours as RGB, turned to grey with the ITU-R 601-2 luma weights that Pillow's
# convert("L") documents (Pillow 13), so a colour photo prepared by `prepare_strip_image` matches a
# rendered strip.
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114])
PAPER_RGB = (255, 248, 245)
MINOR_LINE_RGB = (245, 190, 190)
MAJOR_LINE_RGB = (235, 140, 140)
INK_RGB = (25, 25, 35)
MINOR_LINE_MM = 0.15
MAJOR_LINE_MM = 0.3
# Chosen so that the trace stays visible at 1.28 pixels per mm, not measured from a printer.
TRACE_WIDTH_MM = 0.6


def _luma(rgb: tuple[int, int, int]) -> float:
    return float(np.dot(LUMA_WEIGHTS, rgb) / 255.0)


PAPER_LEVEL = _luma(PAPER_RGB)
MINOR_LINE_LEVEL = _luma(MINOR_LINE_RGB)
MAJOR_LINE_LEVEL = _luma(MAJOR_LINE_RGB)
INK_LEVEL = _luma(INK_RGB)


@dataclass(frozen=True, eq=False)
class EcgRecord:
    """One lead of one patient's ECG, with each beat's position and whether it is ventricular."""

    name: str
    patient_id: str
    fs_hz: float
    lead: str
    signal_mv: np.ndarray  # float32, one lead
    beats: tuple[tuple[int, bool], ...]  # (sample index, is_ventricular)
    label_source: str  # LABELS_REFERENCE or LABELS_DETECTED
    # [start, end) sample ranges where beat labels are unknown. Strips overlapping them are not used.
    artifact_spans: tuple[tuple[int, int], ...] = ()

    @property
    def duration_s(self) -> float:
        return len(self.signal_mv) / self.fs_hz

    @property
    def ventricular_count(self) -> int:
        return sum(1 for _, is_ventricular in self.beats if is_ventricular)


@dataclass(frozen=True, eq=False)
class BeatLabels:
    """Detected beats of one signal: positions, ventricular flags and spans of unknown labels."""

    samples: np.ndarray  # int64 sample indices at the signal's own rate
    is_ventricular: np.ndarray  # bool, one per beat
    artifact_spans: tuple[tuple[int, int], ...]


@dataclass(frozen=True, eq=False)
class StripDataset:
    """Rendered strips with their labels, one row per strip."""

    images: np.ndarray  # float32 [N, STRIP_HEIGHT, STRIP_WIDTH] in [0, 1]
    labels: np.ndarray  # int32 [N]: 1 if a ventricular beat lies fully inside the strip
    patient_ids: np.ndarray  # str [N]
    start_times_s: np.ndarray  # float64 [N], strip start within its record
    ventricular_counts: np.ndarray  # int32 [N], ventricular beats fully inside the strip

    def __len__(self) -> int:
        return len(self.labels)


# --- loading -----------------------------------------------------------------------------------------


def load_rhythm_records(data_dir: Path) -> list[EcgRecord]:
    """Load records 100, the 208 excerpt, a103l and s0010_re with their beat labels."""
    import wfdb

    ecg_dir = Path(data_dir) / "ecg"
    records = []

    header = _require(ecg_dir / "100.hea")
    mitdb_100 = wfdb.rdrecord(str(header.with_suffix("")), channel_names=["MLII"])
    _check_rate(mitdb_100.fs, 360, header)
    annotation = wfdb.rdann(str(header.with_suffix("")), "atr")
    beats = tuple(
        (int(sample), symbol in VENTRICULAR_SYMBOLS)
        for sample, symbol in zip(annotation.sample, annotation.symbol)
        if symbol in BEAT_SYMBOLS
    )
    records.append(
        EcgRecord(
            name="100",
            patient_id="mitdb/100",
            fs_hz=360.0,
            lead="MLII",
            signal_mv=_lead_mv(mitdb_100.p_signal[:, 0], header),
            beats=beats,
            label_source=LABELS_REFERENCE,
        )
    )

    excerpt_path = _require(ecg_dir / "mitdb-208-excerpt.npz")
    with np.load(excerpt_path) as archive:
        raw = archive["ecg"]
    # The archive keeps MIT-BIH's raw ADC units, 200 per mV around a baseline of 1024 (as in 100.hea).
    signal_208 = (raw.astype(np.float64) - 1024.0) / 200.0
    records.append(_detected_record("208", "mitdb/208", 360.0, "MLII", signal_208, excerpt_path))

    header = _require(ecg_dir / "a103l.hea")
    a103l = wfdb.rdrecord(str(header.with_suffix("")), channel_names=["II"])
    _check_rate(a103l.fs, 250, header)
    records.append(
        _detected_record("a103l", "challenge-2015/a103l", 250.0, "II", a103l.p_signal[:, 0], header)
    )

    header = _require(ecg_dir / "s0010_re.hea")
    ptb = wfdb.rdrecord(str(header.with_suffix("")), channel_names=["ii"])
    _check_rate(ptb.fs, 1000, header)
    records.append(_detected_record("s0010_re", "ptbdb/s0010_re", 1000.0, "ii", ptb.p_signal[:, 0], header))

    for record in records:
        log.info(
            "loaded ECG record %s: %.0f s at %.0f Hz, %d beats, %d ventricular (%s), %d artifact spans",
            record.name,
            record.duration_s,
            record.fs_hz,
            len(record.beats),
            record.ventricular_count,
            record.label_source,
            len(record.artifact_spans),
        )
    return records


def _require(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(
            f"ECG record file {path} not found; point AMBULANCE_DATA_DIR at the shared data folder "
            "that contains ecg/"
        )
    return path


def _check_rate(fs: float, expected_hz: float, path: Path) -> None:
    if fs != expected_hz:
        raise ValueError(f"{path} has a sampling rate of {fs} Hz, expected {expected_hz} Hz")


def _lead_mv(values: np.ndarray, path: Path) -> np.ndarray:
    """Return one lead as float32 millivolts, interpolating over samples that WFDB marks invalid."""
    signal = np.asarray(values, dtype=np.float64)
    invalid = ~np.isfinite(signal)
    if invalid.all():
        raise ValueError(f"{path}: the lead has no valid sample")
    if invalid.any():
        log.warning("%s: %d invalid samples interpolated", path.name, int(invalid.sum()))
        positions = np.arange(len(signal))
        signal[invalid] = np.interp(positions[invalid], positions[~invalid], signal[~invalid])
    return signal.astype(np.float32)


def _detected_record(
    name: str, patient_id: str, fs_hz: float, lead: str, values: np.ndarray, path: Path
) -> EcgRecord:
    signal = _lead_mv(values, path)
    labels = label_beats(signal, fs_hz)
    beats = tuple(
        (int(sample), bool(is_ventricular))
        for sample, is_ventricular in zip(labels.samples, labels.is_ventricular)
    )
    return EcgRecord(
        name=name,
        patient_id=patient_id,
        fs_hz=fs_hz,
        lead=lead,
        signal_mv=signal,
        beats=beats,
        label_source=LABELS_DETECTED,
        artifact_spans=labels.artifact_spans,
    )


# --- beat detection and classification ---------------------------------------------------------------


def detect_qrs(signal_mv: np.ndarray, fs: float) -> np.ndarray:
    """Detect QRS complexes with wfdb's xqrs and gqrs together; return sample indices at `fs`."""
    signal = np.asarray(signal_mv, dtype=np.float64)
    _check_signal(signal, fs)
    resampled = _resample_for_detection(signal, fs)
    positions = _detect_fiducials(resampled, _bandpass(resampled, DETECTION_RATE_HZ))
    return _to_signal_rate(positions, fs, len(signal))


def _detect_fiducials(resampled: np.ndarray, filtered: np.ndarray) -> np.ndarray:
    """Return beat fiducial points, in samples at the detection rate."""
    from wfdb import processing

    # Union of both detectors. In the 208 excerpt gqrs finds about 50 beats that xqrs misses, most of
    # them wide PVCs. In the PTB record gqrs finds 22 of the 52 beats that xqrs finds. On record 100
    # each detector alone matches the reference annotations.
    xqrs = processing.xqrs_detect(resampled, fs=DETECTION_RATE_HZ, verbose=False)
    gqrs = processing.gqrs_detect(resampled, fs=DETECTION_RATE_HZ)
    marks = _merge_marks(np.concatenate([xqrs, gqrs]), DETECTION_RATE_HZ)

    # Move each mark to the largest deflection nearby, so that beats from either detector and of any
    # shape are aligned the same way before their shapes are compared.
    search = int(round(FIDUCIAL_SEARCH_S * DETECTION_RATE_HZ))
    fiducials = []
    for mark in marks:
        low = max(mark - search, 0)
        high = min(mark + search + 1, len(filtered))
        fiducials.append(low + int(np.argmax(np.abs(filtered[low:high]))))
    return _merge_marks(np.asarray(fiducials, dtype=np.int64), DETECTION_RATE_HZ)


def _to_signal_rate(positions: np.ndarray, fs: float, length: int) -> np.ndarray:
    samples = np.round(positions * (fs / DETECTION_RATE_HZ)).astype(np.int64)
    return np.clip(samples, 0, length - 1)


def label_beats(signal_mv: np.ndarray, fs: float) -> BeatLabels:
    """Detect beats, flag the ventricular ones and mark spans where labels are unknown."""
    signal = np.asarray(signal_mv, dtype=np.float64)
    _check_signal(signal, fs)
    if len(signal) / fs < MIN_LABEL_DURATION_S:
        raise ValueError(
            f"signal of {len(signal) / fs:.1f} s is too short to learn its dominant beat; "
            f"pass at least {MIN_LABEL_DURATION_S:.0f} s"
        )

    resampled = _resample_for_detection(signal, fs)
    filtered = _bandpass(resampled, DETECTION_RATE_HZ)
    positions = _detect_fiducials(resampled, filtered)
    samples = _to_signal_rate(positions, fs, len(signal))
    if len(samples) == 0:
        log.warning("no beat detected in %.0f s of ECG; all beat labels unknown", len(signal) / fs)
        return BeatLabels(np.zeros(0, np.int64), np.zeros(0, bool), ((0, len(signal)),))

    # Shapes are compared at the detection rate, so that every record uses the same windows and filter.
    windows = _beat_windows(filtered, positions)
    template = _dominant_template(windows)
    correlation = _correlations(windows, template)
    template_slope = _max_slope(template[None, :])[0]
    width_ratio = _widths(windows, template_slope) / max(_widths(template[None, :], template_slope)[0], 1)
    slope_ratio = _max_slope(windows) / template_slope

    abnormal = correlation < VENTRICULAR_MAX_CORRELATION
    is_artifact = abnormal & (slope_ratio > ARTIFACT_MIN_SLOPE_RATIO)
    is_ventricular = abnormal & ~is_artifact & (width_ratio >= VENTRICULAR_MIN_WIDTH_RATIO)

    spans = _artifact_spans(signal, fs, samples, is_artifact)
    inside = np.zeros(len(samples), dtype=bool)
    for start, end in spans:
        inside |= (samples >= start) & (samples < end)
    log.debug(
        "labelled %d beats: %d ventricular, %d artifacts, %d beats dropped in %d artifact spans",
        len(samples),
        int(is_ventricular.sum()),
        int(is_artifact.sum()),
        int(inside.sum()),
        len(spans),
    )
    return BeatLabels(samples[~inside], is_ventricular[~inside], spans)


def score_detection(reference: np.ndarray, detected: np.ndarray, fs: float) -> tuple[float, float]:
    """Return (sensitivity, positive predictive value) of detected beats matched to reference beats within 0.15 s."""
    from wfdb import processing

    window = int(round(MATCH_WINDOW_S * fs))
    comparison = processing.compare_annotations(
        np.asarray(reference, dtype=np.int64), np.asarray(detected, dtype=np.int64), window
    )
    return float(comparison.sensitivity), float(comparison.positive_predictivity)


def _check_signal(signal: np.ndarray, fs: float) -> None:
    if signal.ndim != 1:
        raise ValueError(f"ECG signal must be one lead (1-D), got shape {signal.shape}")
    if not fs > 0:
        raise ValueError(f"sampling rate must be positive, got {fs} Hz")
    if not np.isfinite(signal).all():
        raise ValueError("ECG signal contains NaN or infinite samples; interpolate or cut them first")


def _resample_for_detection(signal: np.ndarray, fs: float) -> np.ndarray:
    from scipy import signal as sps

    if fs == DETECTION_RATE_HZ:
        return signal
    up, down = DETECTION_RATE_HZ, int(round(fs))
    if abs(down - fs) > 1e-6:
        raise ValueError(f"sampling rate {fs} Hz is not a whole number; resample the signal first")
    divisor = np.gcd(up, down)
    return sps.resample_poly(signal, up // divisor, down // divisor)


def _bandpass(signal: np.ndarray, fs: float) -> np.ndarray:
    from scipy import signal as sps

    # 0.5-40 Hz keeps the QRS and T waves and removes baseline wander and mains interference.
    b, a = sps.butter(2, [0.5, 40.0], btype="bandpass", fs=fs)
    return sps.filtfilt(b, a, signal)


def _merge_marks(marks: np.ndarray, fs: float) -> np.ndarray:
    """Sort marks and keep the first of any closer together than the refractory period."""
    ordered = np.sort(np.asarray(marks, dtype=np.int64))
    if len(ordered) == 0:
        return ordered
    minimum_gap = REFRACTORY_S * fs
    merged = [ordered[0]]
    for mark in ordered[1:]:
        if mark - merged[-1] >= minimum_gap:
            merged.append(mark)
    return np.asarray(merged, dtype=np.int64)


def _beat_windows(filtered: np.ndarray, positions: np.ndarray) -> np.ndarray:
    before = int(round(BEAT_WINDOW_BEFORE_S * DETECTION_RATE_HZ))
    after = int(round(BEAT_WINDOW_AFTER_S * DETECTION_RATE_HZ))
    # Edge padding lets beats near either end of the record have a full window.
    padded = np.pad(filtered, (before, after), mode="edge")
    offsets = np.arange(-before, after)
    return padded[positions[:, None] + before + offsets[None, :]]


def _dominant_template(windows: np.ndarray) -> np.ndarray:
    """Return the median of the beats most like the median beat, refined three times."""
    # NOTE: this assumes most beats share the dominant (supraventricular) shape. In a record with more
    # ventricular than normal beats the template becomes the ventricular shape and labels invert.
    template = np.median(windows, axis=0)
    for _ in range(3):
        correlation = _correlations(windows, template)
        template = np.median(windows[correlation >= np.median(correlation)], axis=0)
    return template


def _correlations(windows: np.ndarray, template: np.ndarray) -> np.ndarray:
    centred = windows - windows.mean(axis=1, keepdims=True)
    reference = template - template.mean()
    norms = np.linalg.norm(centred, axis=1) * np.linalg.norm(reference)
    return (centred @ reference) / np.maximum(norms, 1e-12)


def _max_slope(windows: np.ndarray) -> np.ndarray:
    return np.abs(np.diff(windows, axis=1)).max(axis=1)


def _widths(windows: np.ndarray, template_slope: float) -> np.ndarray:
    """Return, in samples, the span over which each beat's slope exceeds a fraction of the template's."""
    steep = np.abs(np.diff(windows, axis=1)) > WIDTH_SLOPE_FRACTION * template_slope
    any_steep = steep.any(axis=1)
    first = np.argmax(steep, axis=1)
    last = steep.shape[1] - 1 - np.argmax(steep[:, ::-1], axis=1)
    return np.where(any_steep, last - first, 0)


def _artifact_spans(
    signal: np.ndarray, fs: float, samples: np.ndarray, is_artifact: np.ndarray
) -> tuple[tuple[int, int], ...]:
    from numpy.lib.stride_tricks import sliding_window_view

    margin = int(round(ARTIFACT_MARGIN_S * fs))
    spans = []

    window = max(int(round(FLAT_WINDOW_S * fs)), 2)
    if len(signal) >= window:
        stride = max(window // 4, 1)
        views = sliding_window_view(signal, window)[::stride]
        flat_starts = np.nonzero(np.ptp(views, axis=1) < FLAT_MAX_PEAK_TO_PEAK_MV)[0] * stride
        spans.extend((int(start) - margin, int(start) + window + margin) for start in flat_starts)

    spans.extend((int(sample) - margin, int(sample) + margin) for sample in samples[is_artifact])

    if len(samples) > 1:
        intervals = np.diff(samples)
        longest = max(GAP_MIN_S * fs, GAP_MIN_RR_RATIO * float(np.median(intervals)))
        for index in np.nonzero(intervals > longest)[0]:
            # Both beats around the gap are included because they are often the onset or the end of the artifact.
            spans.append((int(samples[index]) - 1, int(samples[index + 1]) + 1))

    return _merge_spans(spans, len(signal))


def _merge_spans(spans: list[tuple[int, int]], length: int) -> tuple[tuple[int, int], ...]:
    merged: list[list[int]] = []
    for start, end in sorted((max(start, 0), min(end, length)) for start, end in spans):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return tuple((start, end) for start, end in merged)


# --- rendering ----------------------------------------------------------------------------------------


def render_strip(
    signal_mv: np.ndarray,
    fs: float,
    start_s: float,
    *,
    seconds: float = STRIP_SECONDS,
    height: int = STRIP_HEIGHT,
    width: int = STRIP_WIDTH,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Draw `seconds` of one lead on ECG paper as a float32 [height, width] image in [0, 1]."""
    signal = np.asarray(signal_mv)
    if signal.ndim != 1:
        raise ValueError(f"ECG signal must be one lead (1-D), got shape {signal.shape}")
    if not fs > 0:
        raise ValueError(f"sampling rate must be positive, got {fs} Hz")
    if height < 1 or width < 1 or not seconds > 0:
        raise ValueError(f"invalid strip size {height}x{width} pixels, {seconds} s")
    duration_s = len(signal) / fs
    # Half a sample of tolerance lets a strip end exactly at the last sample.
    if start_s < 0 or start_s + seconds > duration_s + 0.5 / fs:
        raise ValueError(
            f"strip {start_s:.2f}-{start_s + seconds:.2f} s lies outside the signal (0-{duration_s:.2f} s)"
        )

    canvas_height, canvas_width = height * SUPERSAMPLE, width * SUPERSAMPLE
    px_per_mm = canvas_width / (PAPER_SPEED_MM_PER_S * seconds)
    photo = rng is not None

    points = canvas_width * POINTS_PER_COLUMN
    values = _resample_window(signal, fs, start_s, seconds, points)
    segment = signal[int(np.floor(start_s * fs)) : int(np.ceil((start_s + seconds) * fs))]
    baseline_mv = float(np.median(segment)) if len(segment) else float(values.mean())
    x = np.linspace(0.0, canvas_width, points)
    y = canvas_height / 2.0 - (values - baseline_mv) * GAIN_MM_PER_MV * px_per_mm
    y = np.clip(y, 0.5, canvas_height - 0.5)

    # The grid is printed on the paper, so its phase is independent of the trace. Photos shift it.
    phase_mm = tuple(rng.uniform(0.0, MAJOR_GRID_MM, size=2)) if photo else (0.0, 0.0)
    canvas = Image.fromarray(_paper(canvas_height, canvas_width, px_per_mm, phase_mm), mode="L")
    ink = rng.uniform(0.03, 0.2) if photo else INK_LEVEL
    line_width = max(int(round(TRACE_WIDTH_MM * px_per_mm)), 1)
    ImageDraw.Draw(canvas).line(list(zip(x.tolist(), y.tolist())), fill=int(round(ink * 255)), width=line_width)

    # Image.reduce averages blocks of pixels, the same box filter that prepare_strip_image uses.
    # The photo's tilt is applied halfway down, where it costs a quarter as much and the 2 x 2
    # supersampling left still smooths its resampling.
    canvas = canvas.reduce(SUPERSAMPLE // 2)
    if photo:
        canvas = _tilt_and_shift(canvas, rng)
    image = np.asarray(canvas.reduce(2), dtype=np.float32) / 255.0
    if photo:
        image = _photograph(image, rng)
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def _paper(height: int, width: int, px_per_mm: float, phase_mm: tuple[float, float]) -> np.ndarray:
    """Return blank ECG paper as 8-bit grey levels [height, width]."""
    columns = _grid_profile(width, px_per_mm, phase_mm[0])
    rows = _grid_profile(height, px_per_mm, phase_mm[1])
    return np.minimum.outer(rows, columns)


def _grid_profile(pixels: int, px_per_mm: float, phase_mm: float) -> np.ndarray:
    """Return the paper's 8-bit grey level along one axis, with minor and major grid lines."""
    centres_mm = (np.arange(pixels) + 0.5) / px_per_mm + phase_mm

    def coverage(pitch_mm: float, line_mm: float) -> np.ndarray:
        distance_px = np.abs((centres_mm + pitch_mm / 2) % pitch_mm - pitch_mm / 2) * px_per_mm
        return np.clip(line_mm * px_per_mm / 2 + 0.5 - distance_px, 0.0, 1.0)

    minor = PAPER_LEVEL + coverage(MINOR_GRID_MM, MINOR_LINE_MM) * (MINOR_LINE_LEVEL - PAPER_LEVEL)
    major = PAPER_LEVEL + coverage(MAJOR_GRID_MM, MAJOR_LINE_MM) * (MAJOR_LINE_LEVEL - PAPER_LEVEL)
    return np.round(np.minimum(minor, major) * 255).astype(np.uint8)


def _resample_window(signal: np.ndarray, fs: float, start_s: float, seconds: float, points: int) -> np.ndarray:
    """Return `points` evenly spaced values over the window, low-pass filtered first when downsampling."""
    rate_hz = (points - 1) / seconds
    taps = 0
    if fs > rate_hz:
        # Windowed-sinc low-pass at 90% of the new Nyquist frequency, so that a 1 kHz record drawn at
        # 256 points per second shows the same trace as a 250 or 360 Hz one.
        cutoff = 0.45 * rate_hz / fs
        taps = int(np.ceil(4.0 / cutoff)) | 1
    half = taps // 2
    low = max(int(np.floor(start_s * fs)) - half - 1, 0)
    high = min(int(np.ceil((start_s + seconds) * fs)) + half + 2, len(signal))
    segment = np.asarray(signal[low:high], dtype=np.float64)
    if not np.isfinite(segment).all():
        raise ValueError(
            f"ECG signal has NaN or infinite samples near {start_s:.2f}-{start_s + seconds:.2f} s; "
            "interpolate or cut them first"
        )
    if taps:
        n = np.arange(taps) - half
        kernel = 2 * cutoff * np.sinc(2 * cutoff * n) * np.hamming(taps)
        kernel /= kernel.sum()
        segment = np.convolve(np.pad(segment, half, mode="edge"), kernel, mode="valid")
    times = np.linspace(start_s, start_s + seconds, points) * fs - low
    return np.interp(times, np.arange(len(segment)), segment)


def _tilt_and_shift(canvas: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Apply a slight rotation, shear, scale and offset, as a hand-held photo of a strip shows."""
    width, height = canvas.size
    angle = np.deg2rad(rng.uniform(-2.0, 2.0))
    shear = rng.uniform(-0.03, 0.03)
    scale = rng.uniform(0.96, 1.04)
    shift = np.array([rng.uniform(-0.02, 0.02) * width, rng.uniform(-0.06, 0.06) * height])

    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    forward = scale * rotation @ np.array([[1.0, shear], [0.0, 1.0]])
    inverse = np.linalg.inv(forward)
    centre = np.array([width / 2.0, height / 2.0])
    # Pillow maps each output pixel back to the input: input = inverse @ (output - centre - shift) + centre.
    offset = centre - inverse @ (centre + shift)
    coefficients = (inverse[0, 0], inverse[0, 1], offset[0], inverse[1, 0], inverse[1, 1], offset[1])
    # Uncovered corners show more paper.
    return canvas.transform(
        (width, height),
        Image.Transform.AFFINE,
        tuple(float(value) for value in coefficients),
        resample=Image.Resampling.BILINEAR,
        fillcolor=int(round(PAPER_LEVEL * 255)),
    )


def _photograph(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Add blur, uneven light, exposure changes, sensor noise and JPEG compression."""
    height, width = image.shape

    image = _gaussian_blur(image, rng.uniform(0.0, 0.8))

    rows = np.linspace(-0.5, 0.5, height)[:, None] * (height / width)
    columns = np.linspace(-0.5, 0.5, width)[None, :]
    direction = rng.uniform(0.0, 2 * np.pi)
    gradient = np.cos(direction) * columns + np.sin(direction) * rows
    vignette = columns**2 + rows**2
    light = 1.0 + rng.uniform(0.0, 0.35) * gradient - rng.uniform(0.0, 0.6) * vignette
    image = image * light

    contrast = rng.uniform(0.7, 1.1)
    brightness = rng.uniform(-0.1, 0.05)
    image = (image - 0.5) * contrast + 0.5 + brightness
    image = image + rng.normal(0.0, rng.uniform(0.005, 0.03), size=image.shape)
    image = np.clip(image, 0.0, 1.0)

    if rng.random() < 0.5:
        quantised = Image.fromarray(np.round(image * 255).astype(np.uint8), mode="L")
        buffer = io.BytesIO()
        quantised.save(buffer, format="JPEG", quality=int(rng.integers(35, 91)))
        buffer.seek(0)
        image = np.asarray(Image.open(buffer), dtype=np.float32) / 255.0
    return image


def _gaussian_blur(image: np.ndarray, sigma_px: float) -> np.ndarray:
    from numpy.lib.stride_tricks import sliding_window_view

    if sigma_px < 0.05:
        return image
    radius = max(int(np.ceil(3 * sigma_px)), 1)
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (offsets / sigma_px) ** 2)
    kernel /= kernel.sum()
    padded = np.pad(image, radius, mode="edge")
    across = sliding_window_view(padded, len(kernel), axis=1) @ kernel
    return sliding_window_view(across, len(kernel), axis=0) @ kernel


# --- preparing a received photo --------------------------------------------------------------------------


def prepare_strip_image(
    image: Image.Image | str | os.PathLike | np.ndarray,
    *,
    height: int = STRIP_HEIGHT,
    width: int = STRIP_WIDTH,
) -> np.ndarray:
    """Turn a strip photo (PIL image, file path or array) into a float32 [height, width] image in [0, 1]."""
    if height < 1 or width < 1:
        raise ValueError(f"invalid output size {height}x{width} pixels")
    if isinstance(image, (str, os.PathLike)):
        with Image.open(image) as opened:
            grey = _pil_to_grey(opened)
    elif isinstance(image, Image.Image):
        grey = _pil_to_grey(image)
    elif isinstance(image, np.ndarray):
        grey = _array_to_grey(image)
    else:
        raise TypeError(f"expected a PIL image, a file path or a numpy array, got {type(image).__name__}")

    rows, columns = grey.shape
    if rows > columns:
        # A rotated strip cannot be turned back safely: 90 and 270 degrees give opposite traces.
        raise ValueError(
            f"strip image is {columns}x{rows} pixels (portrait); rotate it so the trace runs left to right"
        )

    # Crop the centre to the strip's aspect ratio, so that the paper's squares stay square and one
    # pixel spans the same time and voltage as in a rendered strip.
    target_ratio = width / height
    if columns / rows > target_ratio:
        keep = max(int(round(rows * target_ratio)), 1)
        left = (columns - keep) // 2
        grey = grey[:, left : left + keep]
    else:
        keep = max(int(round(columns / target_ratio)), 1)
        top = (rows - keep) // 2
        grey = grey[top : top + keep, :]

    resized = Image.fromarray(grey.astype(np.float32), mode="F").resize(
        (width, height), Image.Resampling.BOX if grey.shape[1] >= width else Image.Resampling.BILINEAR
    )
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


def _pil_to_grey(image: Image.Image) -> np.ndarray:
    # Phones often record the camera's orientation in EXIF instead of rotating the pixels.
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        return _array_to_grey(np.asarray(image))
    if "A" in image.mode or "transparency" in image.info:
        return _array_to_grey(np.asarray(image.convert("RGBA")))
    return _array_to_grey(np.asarray(image.convert("RGB")))


def _array_to_grey(array: np.ndarray) -> np.ndarray:
    """Return a 2-D float array in [0, 1] from a grey, grey+alpha, RGB or RGBA array of any dtype."""
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (2, 3, 4)):
        raise ValueError(
            f"image array has shape {array.shape}; expected (height, width) or (height, width, 1-4 channels)"
        )
    if min(array.shape[:2]) < 2:
        raise ValueError(f"image array of shape {array.shape} is too small to hold a strip")

    scaled = _scale_to_unit(array)
    if scaled.ndim == 2:
        return scaled

    channels = scaled.shape[2]
    alpha = scaled[:, :, -1] if channels in (2, 4) else None
    colour = scaled[:, :, : channels - 1] if alpha is not None else scaled
    grey = colour[:, :, 0] if colour.shape[2] == 1 else colour @ LUMA_WEIGHTS
    if alpha is not None:
        # Transparent pixels become white paper.
        grey = grey * alpha + (1.0 - alpha)
    return grey


def _scale_to_unit(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.bool_:
        return array.astype(np.float64)
    if np.issubdtype(array.dtype, np.integer):
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 65535:
            raise ValueError(f"integer image values {low}..{high} are outside 0..65535")
        # 8-bit unless the dtype or the values show 16-bit.
        full_scale = 65535.0 if array.dtype == np.uint16 or high > 255 else 255.0
        return array.astype(np.float64) / full_scale
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ValueError("image array contains NaN or infinite values")
        low, high = float(array.min()), float(array.max())
        if low >= 0.0 and high <= 1.0:
            return array.astype(np.float64)
        if low >= 0.0 and high <= 255.0:
            return array.astype(np.float64) / 255.0
        raise ValueError(f"float image values {low:.3g}..{high:.3g} are outside 0..1 and 0..255")
    raise ValueError(f"unsupported image dtype {array.dtype}")


# --- data set -------------------------------------------------------------------------------------------


def strip_dataset(
    records: Sequence[EcgRecord],
    *,
    seconds: float = STRIP_SECONDS,
    step_s: float = 2.0,
    seed: int = 0,
    photo: bool = True,
) -> StripDataset:
    """Render overlapping strips of every record and label each by the ventricular beats fully inside it."""
    if not seconds > 0 or not step_s > 0:
        raise ValueError(f"strip length and step must be positive, got {seconds} s and {step_s} s")
    rng = np.random.default_rng(seed) if photo else None

    images, labels, patients, starts, counts = [], [], [], [], []
    for record in records:
        beat_times_s = np.array([sample for sample, _ in record.beats], dtype=np.float64) / record.fs_hz
        ventricular = np.array([flag for _, flag in record.beats], dtype=bool)
        spans_s = [(start / record.fs_hz, end / record.fs_hz) for start, end in record.artifact_spans]

        rendered = skipped = positives = 0
        last_start = record.duration_s - seconds
        for start_s in np.arange(0.0, last_start + 1e-9, step_s):
            end_s = start_s + seconds
            if any(span_start < end_s and span_end > start_s for span_start, span_end in spans_s):
                skipped += 1
                continue
            inside = (beat_times_s - BEAT_HALF_WIDTH_S >= start_s) & (beat_times_s + BEAT_HALF_WIDTH_S <= end_s)
            count = int((inside & ventricular).sum())

            images.append(render_strip(record.signal_mv, record.fs_hz, float(start_s), seconds=seconds, rng=rng))
            labels.append(1 if count else 0)
            patients.append(record.patient_id)
            starts.append(float(start_s))
            counts.append(count)
            rendered += 1
            positives += 1 if count else 0
        log.info(
            "record %s: %d strips (%d with a ventricular beat), %d skipped for artifacts",
            record.name,
            rendered,
            positives,
            skipped,
        )

    if not images:
        raise ValueError(f"no {seconds:.0f} s strip fits in the {len(records)} records given")
    return StripDataset(
        images=np.stack(images).astype(np.float32),
        labels=np.asarray(labels, dtype=np.int32),
        patient_ids=np.asarray(patients, dtype=str),
        start_times_s=np.asarray(starts, dtype=np.float64),
        ventricular_counts=np.asarray(counts, dtype=np.int32),
    )
