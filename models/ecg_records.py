"""ECG records for the rhythm-strip model: loading, beat detection and the ventricular-beat rule.

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

wfdb and scipy are imported inside the functions that need them; training imports this module, the
edge agent does not.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

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
        for sample, symbol in zip(annotation.sample, annotation.symbol, strict=False)
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
        for sample, is_ventricular in zip(labels.samples, labels.is_ventricular, strict=False)
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
