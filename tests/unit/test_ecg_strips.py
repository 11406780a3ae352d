"""ECG rhythm records, the ventricular-beat detector, strip rendering and photo preparation."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.ecg_records import (
    LABELS_DETECTED,
    LABELS_REFERENCE,
    EcgRecord,
    detect_qrs,
    label_beats,
    load_rhythm_records,
    score_detection,
)
from models.ecg_strips import (
    STRIP_HEIGHT,
    STRIP_WIDTH,
    StripDataset,
    prepare_strip_image,
    render_strip,
    strip_dataset,
)

PROJECT_DIR = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def records(data_dir: Path) -> dict[str, EcgRecord]:
    return {record.name: record for record in load_rhythm_records(data_dir)}


@pytest.fixture(scope="module")
def detected_100(records: dict[str, EcgRecord]):
    """Record 100 labelled by the detector, to compare with its reference annotations."""
    record = records["100"]
    return label_beats(record.signal_mv, record.fs_hz)


@pytest.fixture(scope="module")
def dataset(records: dict[str, EcgRecord]) -> StripDataset:
    return strip_dataset(list(records.values()))


def sinus_like_signal(fs: float, seconds: float = 20.0) -> np.ndarray:
    """Return a narrow spike every 0.8 s on a flat baseline, in millivolts."""
    t = np.arange(int(seconds * fs)) / fs
    return np.exp(-0.5 * ((t % 0.8 - 0.4) / 0.01) ** 2).astype(np.float32)


# --- records ---


def test_records_rates_and_leads(records: dict[str, EcgRecord]) -> None:
    expected = {
        "100": (360.0, "MLII"),
        "208": (360.0, "MLII"),
        "a103l": (250.0, "II"),
        "s0010_re": (1000.0, "ii"),
    }
    assert set(records) == set(expected)
    for name, (fs_hz, lead) in expected.items():
        record = records[name]
        assert record.fs_hz == fs_hz, name
        assert record.lead == lead, name
        assert record.signal_mv.dtype == np.float32, name
        assert record.signal_mv.ndim == 1, name
        assert np.isfinite(record.signal_mv).all(), name


def test_patient_ids_distinct(records: dict[str, EcgRecord]) -> None:
    patient_ids = [record.patient_id for record in records.values()]
    assert len(set(patient_ids)) == len(patient_ids)
    assert records["208"].patient_id == "mitdb/208"


def test_208_excerpt_millivolt_scaling(records: dict[str, EcgRecord], data_dir: Path) -> None:
    with np.load(data_dir / "ecg" / "mitdb-208-excerpt.npz") as archive:
        raw = archive["ecg"]
    record = records["208"]
    assert len(record.signal_mv) == 108_000
    assert record.duration_s == pytest.approx(300.0)
    np.testing.assert_allclose(record.signal_mv, (raw.astype(np.float64) - 1024) / 200, atol=1e-6)
    assert record.label_source == LABELS_DETECTED


def test_100_reference_annotation_counts(records: dict[str, EcgRecord]) -> None:
    record = records["100"]
    # 2,274 annotations: 2,239 N, 33 A, 1 V and one rhythm-change '+', which is not a beat.
    assert len(record.beats) == 2273
    assert record.ventricular_count == 1
    assert record.label_source == LABELS_REFERENCE
    assert record.artifact_spans == ()
    assert record.duration_s == pytest.approx(650_000 / 360)


# --- detector ---


def test_detector_matches_100_reference(records: dict[str, EcgRecord], detected_100) -> None:
    reference = np.array([sample for sample, _ in records["100"].beats])
    sensitivity, positive_predictivity = score_detection(reference, detected_100.samples, 360.0)
    # Measured 1.000 and 1.000 (2,273 of 2,273 beats, no false detection).
    assert sensitivity >= 0.995
    assert positive_predictivity >= 0.995


def test_detector_finds_100_reference_pvc(records: dict[str, EcgRecord], detected_100) -> None:
    reference_pvcs = [sample for sample, is_ventricular in records["100"].beats if is_ventricular]
    detected_pvcs = detected_100.samples[detected_100.is_ventricular]
    assert len(detected_pvcs) <= 2
    assert any(abs(int(detected) - reference_pvcs[0]) <= 0.15 * 360 for detected in detected_pvcs)


def test_208_many_more_ventricular_than_100(records: dict[str, EcgRecord], detected_100) -> None:
    record = records["208"]
    # Measured 122 of 499 beats in the 208 excerpt and 1 of 2,273 in record 100.
    assert record.ventricular_count >= 80
    assert 0.15 <= record.ventricular_count / len(record.beats) <= 0.45
    assert int(detected_100.is_ventricular.sum()) <= 2
    assert record.ventricular_count >= 40 * max(int(detected_100.is_ventricular.sum()), 1)


def test_sinus_records_no_ventricular(records: dict[str, EcgRecord]) -> None:
    for name in ("a103l", "s0010_re"):
        assert records[name].ventricular_count <= 2, name
        assert records[name].label_source == LABELS_DETECTED, name
    # s0010_re beats at about 82 per minute for 38.4 s.
    assert 48 <= len(records["s0010_re"].beats) <= 56


def test_a103l_artifact_spans_cover_lead_off(records: dict[str, EcgRecord]) -> None:
    record = records["a103l"]
    spans_s = [(start / record.fs_hz, end / record.fs_hz) for start, end in record.artifact_spans]
    # The lead is clipped or off from about 263 s to 316 s. The first 4 minutes are clean.
    assert all(start > 250.0 for start, _ in spans_s)
    for second in (265.0, 273.0, 284.0, 294.0, 302.0, 314.0):
        assert any(start <= second < end for start, end in spans_s), second
    beat_times_s = [sample / record.fs_hz for sample, _ in record.beats]
    assert not any(start <= time_s < end for time_s in beat_times_s for start, end in spans_s)


def test_detect_qrs_1khz_record(records: dict[str, EcgRecord]) -> None:
    record = records["s0010_re"]
    samples = detect_qrs(record.signal_mv, record.fs_hz)
    assert 48 <= len(samples) <= 56
    assert samples.min() >= 0
    assert samples.max() < len(record.signal_mv)
    assert np.diff(samples).min() >= 0.2 * record.fs_hz


def test_label_beats_rejects_short_signal() -> None:
    with pytest.raises(ValueError, match="too short"):
        label_beats(np.zeros(360 * 5, dtype=np.float32), 360.0)


def test_label_beats_rejects_nan() -> None:
    signal = sinus_like_signal(360.0)
    signal[100] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        label_beats(signal, 360.0)


# --- rendering ---


def test_render_shape_range_paper(records: dict[str, EcgRecord]) -> None:
    image = render_strip(records["100"].signal_mv, 360.0, 100.0)
    assert image.shape == (STRIP_HEIGHT, STRIP_WIDTH)
    assert image.dtype == np.float32
    assert image.min() >= 0.0
    assert image.max() <= 1.0
    # Light paper with a dark trace.
    assert np.median(image) > 0.8
    assert image.min() < 0.3


def test_render_trace_centred_on_median() -> None:
    flat = np.full(3600, 1.7, dtype=np.float32)
    image = render_strip(flat, 360.0, 0.0)
    darkest_row = int(np.argmin(image[:, 20:-20].mean(axis=1)))
    assert abs(darkest_row - STRIP_HEIGHT / 2) <= 1


def test_render_clips_large_deflection() -> None:
    signal = sinus_like_signal(360.0) * 20.0  # 20 mV spikes, far beyond the strip's +-2.5 mV
    image = render_strip(signal, 360.0, 0.0)
    assert image.shape == (STRIP_HEIGHT, STRIP_WIDTH)
    assert image[0].min() < 0.5  # the trace runs along the top edge


def test_render_deterministic_per_seed(records: dict[str, EcgRecord]) -> None:
    signal = records["208"].signal_mv
    first = render_strip(signal, 360.0, 30.0, rng=np.random.default_rng(7))
    again = render_strip(signal, 360.0, 30.0, rng=np.random.default_rng(7))
    other = render_strip(signal, 360.0, 30.0, rng=np.random.default_rng(8))
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - other).mean() > 0.01
    np.testing.assert_array_equal(render_strip(signal, 360.0, 30.0), render_strip(signal, 360.0, 30.0))


def test_render_photo_differs_from_clean(records: dict[str, EcgRecord]) -> None:
    signal = records["208"].signal_mv
    clean = render_strip(signal, 360.0, 30.0)
    for seed in range(5):
        photo = render_strip(signal, 360.0, 30.0, rng=np.random.default_rng(seed))
        assert photo.shape == clean.shape
        assert photo.dtype == np.float32
        assert photo.min() >= 0.0
        assert photo.max() <= 1.0
        assert np.abs(photo - clean).mean() > 0.02, seed


def test_render_same_for_any_sampling_rate(records: dict[str, EcgRecord]) -> None:
    from scipy.signal import resample_poly

    signal = records["100"].signal_mv.astype(np.float64)[: 360 * 60]
    at_360 = render_strip(signal, 360.0, 20.0)
    for fs, up, down in ((250.0, 25, 36), (1000.0, 25, 9)):
        resampled = resample_poly(signal, up, down)
        image = render_strip(resampled, fs, 20.0)
        # Measured mean differences of 0.0006 (250 Hz) and 0.0005 (1 kHz).
        assert np.abs(image - at_360).mean() < 0.005, fs


def test_render_rejects_window_outside_signal() -> None:
    signal = sinus_like_signal(360.0, seconds=12.0)
    with pytest.raises(ValueError, match="outside the signal"):
        render_strip(signal, 360.0, 5.0)
    with pytest.raises(ValueError, match="outside the signal"):
        render_strip(signal, 360.0, -1.0)
    assert render_strip(signal, 360.0, 2.0).shape == (STRIP_HEIGHT, STRIP_WIDTH)


def test_render_thousand_strips_seconds(records: dict[str, EcgRecord]) -> None:
    signal = records["100"].signal_mv
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    for index in range(200):
        render_strip(signal, 360.0, 2.0 * index, rng=rng)
    elapsed_s = time.perf_counter() - started
    # Measured about 3 ms per photo-like strip. Even at 30 ms, 1,000 strips would take only 30 s.
    assert elapsed_s < 6.0


# --- preparing a received photo ---


def test_prepare_rgb_image_of_other_size(records: dict[str, EcgRecord]) -> None:
    signal = records["100"].signal_mv
    rendered = render_strip(signal, 360.0, 100.0)
    large = render_strip(signal, 360.0, 100.0, height=2 * STRIP_HEIGHT, width=2 * STRIP_WIDTH)
    photo = Image.fromarray(np.round(large * 255).astype(np.uint8), mode="L").convert("RGB")
    prepared = prepare_strip_image(photo)
    assert prepared.shape == (STRIP_HEIGHT, STRIP_WIDTH)
    assert prepared.dtype == np.float32
    assert prepared.min() >= 0.0
    assert prepared.max() <= 1.0
    # Measured 0.006: same orientation, same grey scale, same mm per pixel.
    assert np.abs(prepared - rendered).mean() < 0.02


def test_prepare_saved_png(tmp_path: Path, records: dict[str, EcgRecord]) -> None:
    rendered = render_strip(records["208"].signal_mv, 360.0, 60.0, rng=np.random.default_rng(3))
    path = tmp_path / "strip.png"
    Image.fromarray(np.round(rendered * 255).astype(np.uint8), mode="L").save(path)
    prepared = prepare_strip_image(path)
    assert prepared.shape == (STRIP_HEIGHT, STRIP_WIDTH)
    assert np.abs(prepared - rendered).max() <= 0.5 / 255 + 1e-6
    np.testing.assert_array_equal(prepare_strip_image(str(path)), prepared)


def test_prepare_crops_to_strip_aspect() -> None:
    strip = np.full((STRIP_HEIGHT, STRIP_WIDTH), 0.9, dtype=np.float32)
    strip[:, ::40] = 0.1
    wider = np.pad(strip, ((0, 0), (40, 40)), constant_values=0.0)
    taller = np.pad(strip, ((8, 8), (0, 0)), constant_values=0.0)
    np.testing.assert_allclose(prepare_strip_image(wider), strip, atol=1e-6)
    np.testing.assert_allclose(prepare_strip_image(taller), strip, atol=1e-6)


def test_prepare_array_dtypes_and_channels() -> None:
    grey = np.linspace(0.0, 1.0, STRIP_WIDTH, dtype=np.float32)[None, :].repeat(STRIP_HEIGHT, axis=0)
    cases = {
        "float 0-1": grey,
        "float 0-255": grey * 255.0,
        "uint8 rgb": np.round(grey * 255).astype(np.uint8)[:, :, None].repeat(3, axis=2),
        "uint16": np.round(grey * 65535).astype(np.uint16),
        "single channel": grey[:, :, None],
    }
    for name, array in cases.items():
        prepared = prepare_strip_image(array)
        assert prepared.shape == (STRIP_HEIGHT, STRIP_WIDTH), name
        assert prepared.dtype == np.float32, name
        assert np.abs(prepared - grey).max() < 0.01, name


def test_prepare_transparent_pixels_white() -> None:
    rgba = np.zeros((STRIP_HEIGHT, STRIP_WIDTH, 4), dtype=np.uint8)
    prepared = prepare_strip_image(rgba)
    np.testing.assert_allclose(prepared, 1.0)


def test_prepare_rejects_portrait_and_bad_input() -> None:
    with pytest.raises(ValueError, match="portrait"):
        prepare_strip_image(np.zeros((320, 64), dtype=np.uint8))
    with pytest.raises(ValueError, match="shape"):
        prepare_strip_image(np.zeros((4, 64, 320)))
    with pytest.raises(ValueError, match="NaN"):
        prepare_strip_image(np.full((64, 320), np.nan))
    with pytest.raises(TypeError):
        prepare_strip_image([[0.0] * 320] * 64)


# --- data set ---


def test_dataset_shapes(dataset: StripDataset) -> None:
    count = len(dataset)
    assert dataset.images.shape == (count, STRIP_HEIGHT, STRIP_WIDTH)
    assert dataset.images.dtype == np.float32
    assert dataset.labels.shape == (count,)
    assert dataset.patient_ids.shape == (count,)
    assert dataset.start_times_s.shape == (count,)
    assert set(np.unique(dataset.labels)) <= {0, 1}
    np.testing.assert_array_equal(dataset.labels, (dataset.ventricular_counts > 0).astype(np.int32))


def test_dataset_labels_by_record(dataset: StripDataset) -> None:
    in_208 = dataset.patient_ids == "mitdb/208"
    in_100 = dataset.patient_ids == "mitdb/100"
    # Measured 120 of 127 strips of 208 positive, 5 of 898 strips of 100.
    assert in_208.sum() >= 100
    assert dataset.labels[in_208].mean() >= 0.85
    assert in_100.sum() >= 890
    assert dataset.labels[in_100].mean() <= 0.02
    for patient_id in ("challenge-2015/a103l", "ptbdb/s0010_re"):
        assert dataset.labels[dataset.patient_ids == patient_id].sum() == 0, patient_id


def test_dataset_skips_artifact_strips(dataset: StripDataset, records: dict[str, EcgRecord]) -> None:
    record = records["a103l"]
    starts = dataset.start_times_s[dataset.patient_ids == "challenge-2015/a103l"]
    spans_s = [(start / record.fs_hz, end / record.fs_hz) for start, end in record.artifact_spans]
    assert len(starts) < 161  # 161 strips fit in 330 s at a 2 s step
    for start in starts:
        assert not any(span_start < start + 10.0 and span_end > start for span_start, span_end in spans_s)


def test_dataset_strip_matches_render(dataset: StripDataset, records: dict[str, EcgRecord]) -> None:
    index = int(np.nonzero(dataset.patient_ids == "mitdb/100")[0][10])
    assert dataset.start_times_s[index] == pytest.approx(20.0)
    clean = render_strip(records["100"].signal_mv, 360.0, 20.0)
    # A photo of the same strip: perturbed, but the same trace on the same paper.
    assert np.abs(dataset.images[index] - clean).mean() < 0.25


def test_dataset_deterministic_and_clean(records: dict[str, EcgRecord]) -> None:
    short = [records["s0010_re"]]
    first = strip_dataset(short, seed=5)
    again = strip_dataset(short, seed=5)
    np.testing.assert_array_equal(first.images, again.images)
    clean = strip_dataset(short, photo=False)
    np.testing.assert_array_equal(clean.images[0], render_strip(records["s0010_re"].signal_mv, 1000.0, 0.0))
    assert len(clean) == 15  # strips start every 2 s and must end by 38.4 s


# --- edge import ---


def test_import_without_tensorflow_or_wfdb() -> None:
    code = (
        "import sys\n"
        "import numpy as np\n"
        "from models.ecg_strips import prepare_strip_image, STRIP_HEIGHT, STRIP_WIDTH\n"
        "prepare_strip_image(np.zeros((120, 600, 3), dtype=np.uint8))\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in {'tensorflow', 'keras', 'wfdb', 'scipy'})\n"
        "print(loaded)\n"
        "sys.exit(1 if loaded else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PROJECT_DIR)
    assert result.returncode == 0, (
        f"models.ecg_strips imported {result.stdout.strip()}: {result.stderr[-500:]}"
    )
