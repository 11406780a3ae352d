"""Clinical scores computed from vital signs: NEWS2, qSOFA, shock index and the NEWS2 safety floor.

Pure Python, shared by the edge agent, the hub and training, so each side scores a frame identically.
"""

from __future__ import annotations

from protocol import Consciousness, News2Score, VitalsFrame

# NEWS2 parameter names, in the order of the chart.
NEWS2_PARAMETERS = (
    "respiration_rate",
    "spo2",
    "air_or_oxygen",
    "systolic_bp",
    "pulse",
    "consciousness",
    "temperature",
)

# Royal College of Physicians. National Early Warning Score (NEWS) 2: Standardising the assessment
# of acute-illness severity in the NHS. Updated report of a working party. London: RCP, 2017.
# Chart 1, "The NEWS scoring system". Each band is (upper bound inclusive, score); values above the
# last bound score the final entry. Bounds are written so that values between the chart's integer
# bands (a respiration rate of 8.5, a temperature of 36.05) fall into the band a clinician rounding
# to the chart's precision would choose.
_RESPIRATION_RATE_BANDS = ((8, 3), (11, 1), (20, 0), (24, 2), (float("inf"), 3))
_SPO2_SCALE1_BANDS = ((91, 3), (93, 2), (95, 1), (float("inf"), 0))
_SYSTOLIC_BP_BANDS = ((90, 3), (100, 2), (110, 1), (219, 0), (float("inf"), 3))
_PULSE_BANDS = ((40, 3), (50, 1), (90, 0), (110, 1), (130, 2), (float("inf"), 3))
_TEMPERATURE_BANDS = ((35.0, 3), (36.0, 1), (38.0, 0), (39.0, 1), (float("inf"), 2))
# Chart 1: supplemental oxygen scores 2, air 0.
_OXYGEN_SCORE = 2
# Chart 1: any of new Confusion, Voice, Pain or Unresponsive scores 3.
_NOT_ALERT_SCORE = 3

# RCP NEWS2 2017, clinical response thresholds: an aggregate of 5-6 triggers an urgent response, 7 or
# more an emergency response, and a single parameter scoring 3 an urgent ward-based response.
NEWS2_EMERGENCY_THRESHOLD = 7
NEWS2_URGENT_THRESHOLD = 5
RED_SUBSCORE = 3


def _band(value: float, bands: tuple[tuple[float, int], ...]) -> int:
    for upper, score in bands:
        if value <= upper:
            return score
    raise AssertionError("the last band is unbounded")


def _spo2_scale2(spo2: float, on_oxygen: bool) -> int:
    """SpO2 Scale 2 of RCP NEWS2 2017 chart 1, for confirmed hypercapnic respiratory failure."""
    if spo2 <= 83:
        return 3
    if spo2 <= 85:
        return 2
    if spo2 <= 87:
        return 1
    if spo2 <= 92 or not on_oxygen:
        return 0
    if spo2 <= 94:
        return 1
    if spo2 <= 96:
        return 2
    return 3


def consciousness_of(frame: VitalsFrame) -> Consciousness | None:
    """Return the frame's ACVPU level, deriving it from the GCS when only that was recorded."""
    if frame.consciousness is not None:
        return frame.consciousness
    if frame.gcs is None:
        return None
    return consciousness_from_gcs(frame.gcs)


def consciousness_from_gcs(gcs: int) -> Consciousness:
    """Approximate the ACVPU level of a Glasgow Coma Scale score.

    Kelly CA, Upex A, Bateman DN. Comparison of consciousness level assessment in the poisoned
    patient using the alert/verbal/painful/unresponsive scale and the Glasgow Coma Scale. Ann Emerg
    Med 2004;44(2):108-113: median GCS 15 for Alert, 13 (IQR 12-14) for Voice, 8 (IQR 7-9) for Pain
    and 3 for Unresponsive. The cut points below lie between those ranges. A GCS of 14 counts as
    new confusion; NEWS2 scores every level but Alert the same.
    """
    if gcs >= 15:
        return Consciousness.ALERT
    if gcs == 14:
        return Consciousness.CONFUSED
    if gcs >= 10:
        return Consciousness.VOICE
    if gcs >= 4:
        return Consciousness.PAIN
    return Consciousness.UNRESPONSIVE


def news2(frame: VitalsFrame, *, hypercapnic_respiratory_failure: bool = False) -> News2Score:
    """Score NEWS2 on one frame; absent parameters score 0 and are listed in `missing`.

    Scale 2 for SpO2 applies only when a clinician has confirmed hypercapnic respiratory failure.
    A frame that does not record oxygen therapy is scored as on air.
    """
    subscores: dict[str, int] = {}
    missing: list[str] = []

    def put(name: str, score: int | None) -> None:
        if score is None:
            missing.append(name)
            subscores[name] = 0
        else:
            subscores[name] = score

    on_oxygen = bool(frame.supplemental_oxygen)
    put(
        "respiration_rate",
        None if frame.rr_per_min is None else _band(frame.rr_per_min, _RESPIRATION_RATE_BANDS),
    )
    if frame.spo2_pct is None:
        put("spo2", None)
    elif hypercapnic_respiratory_failure:
        put("spo2", _spo2_scale2(frame.spo2_pct, on_oxygen))
    else:
        put("spo2", _band(frame.spo2_pct, _SPO2_SCALE1_BANDS))
    if frame.supplemental_oxygen is None:
        missing.append("air_or_oxygen")
    subscores["air_or_oxygen"] = _OXYGEN_SCORE if on_oxygen else 0
    put("systolic_bp", None if frame.sbp_mmhg is None else _band(frame.sbp_mmhg, _SYSTOLIC_BP_BANDS))
    put("pulse", None if frame.hr_bpm is None else _band(frame.hr_bpm, _PULSE_BANDS))
    level = consciousness_of(frame)
    put(
        "consciousness",
        None if level is None else (0 if level == Consciousness.ALERT else _NOT_ALERT_SCORE),
    )
    put("temperature", None if frame.temp_c is None else _band(frame.temp_c, _TEMPERATURE_BANDS))

    red = [name for name in NEWS2_PARAMETERS if subscores[name] >= RED_SUBSCORE]
    # Built from values computed here, so validation is skipped: the hub scores thousands a second.
    return News2Score.model_construct(
        total=sum(subscores.values()),
        subscores=subscores,
        red_parameters=red,
        missing=missing,
    )


QSOFA_POSITIVE = 2  # Sepsis-3 (Singer et al. 2016, below): two or more criteria


def qsofa(frame: VitalsFrame) -> int | None:
    """Count qSOFA criteria met; None when none of the three could be assessed.

    Singer M et al. The Third International Consensus Definitions for Sepsis and Septic Shock
    (Sepsis-3). JAMA 2016;315(8):801-810: respiratory rate >= 22/min, altered mentation (GCS < 15),
    systolic blood pressure <= 100 mmHg; two or more suggest a poor outcome when infection is present.
    """
    level = consciousness_of(frame)
    known = [frame.rr_per_min is not None, frame.sbp_mmhg is not None, level is not None]
    if not any(known):
        return None
    count = 0
    if frame.rr_per_min is not None and frame.rr_per_min >= 22:
        count += 1
    if frame.sbp_mmhg is not None and frame.sbp_mmhg <= 100:
        count += 1
    if level is not None and level != Consciousness.ALERT:
        count += 1
    return count


# Allgöwer M, Burri C. "Schockindex". Dtsch Med Wochenschr 1967;92(43):1947-1950: heart rate divided
# by systolic pressure averages 0.54 in health; about 1.0 means incipient circulatory shock.
SHOCK_INDEX_ABNORMAL = 1.0


def shock_index(frame: VitalsFrame) -> float | None:
    """Return heart rate / systolic blood pressure, or None if either is absent or SBP is 0."""
    if frame.hr_bpm is None or not frame.sbp_mmhg:
        return None
    return round(frame.hr_bpm / frame.sbp_mmhg, 3)


def news2_acuity_floor(score: News2Score) -> int:
    """Return the least urgent KTAS level NEWS2 allows; the final acuity is never less urgent.

    Our mapping of the RCP NEWS2 2017 response thresholds onto KTAS levels: an emergency response
    (aggregate >= 7) or a single red parameter maps to KTAS 2 (emergency), an urgent response
    (aggregate 5-6) to KTAS 3 (urgent); below that NEWS2 sets no floor (KTAS 5).
    """
    if score.total >= NEWS2_EMERGENCY_THRESHOLD or score.red_parameters:
        return 2
    if score.total >= NEWS2_URGENT_THRESHOLD:
        return 3
    return 5
