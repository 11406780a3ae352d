"""Photographed-looking ECG rhythm strips rendered from real records, and photos prepared for the model.

`render_strip` draws a 10-second strip on standard ECG paper with optional photo-like perturbations;
`strip_dataset` renders labelled strips from the records that `models.ecg_records` loads; and
`prepare_strip_image` turns a photo a crew takes into the model's input. The edge agent imports this
module for `prepare_strip_image`, so only numpy and Pillow are imported at module level.
"""

from __future__ import annotations

import base64
import io
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from models.ecg_records import BEAT_HALF_WIDTH_S, EcgRecord

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
class StripDataset:
    """Rendered strips with their labels, one row per strip."""

    images: np.ndarray  # float32 [N, STRIP_HEIGHT, STRIP_WIDTH] in [0, 1]
    labels: np.ndarray  # int32 [N]: 1 if a ventricular beat lies fully inside the strip
    patient_ids: np.ndarray  # str [N]
    start_times_s: np.ndarray  # float64 [N], strip start within its record
    ventricular_counts: np.ndarray  # int32 [N], ventricular beats fully inside the strip

    def __len__(self) -> int:
        return len(self.labels)


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
    ImageDraw.Draw(canvas).line(
        list(zip(x.tolist(), y.tolist(), strict=False)), fill=int(round(ink * 255)), width=line_width
    )

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


def _resample_window(
    signal: np.ndarray, fs: float, start_s: float, seconds: float, points: int
) -> np.ndarray:
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
            inside = (beat_times_s - BEAT_HALF_WIDTH_S >= start_s) & (
                beat_times_s + BEAT_HALF_WIDTH_S <= end_s
            )
            count = int((inside & ventricular).sum())

            images.append(
                render_strip(record.signal_mv, record.fs_hz, float(start_s), seconds=seconds, rng=rng)
            )
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


# --- transport ------------------------------------------------------------------------------------


def encode_strip_png(image: np.ndarray) -> str:
    """Return a prepared strip image as base64 PNG (8-bit grey), for a triage result message."""
    grey = np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(grey, mode="L").save(buffer, format="PNG", optimize=True)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_strip_png(text: str) -> np.ndarray:
    """Decode `encode_strip_png` output into a float32 image in [0, 1]; raise ValueError if invalid."""
    try:
        raw = base64.b64decode(text, validate=True)
        with Image.open(io.BytesIO(raw)) as opened:
            grey = np.asarray(opened.convert("L"), dtype=np.float32) / 255.0
    except (ValueError, OSError) as exc:
        raise ValueError(f"ecg_strip_png is not a base64 PNG image: {exc}") from exc
    if grey.shape != (STRIP_HEIGHT, STRIP_WIDTH):
        raise ValueError(
            f"ecg_strip_png is {grey.shape[1]}x{grey.shape[0]} pixels, expected {STRIP_WIDTH}x{STRIP_HEIGHT}"
        )
    return grey
