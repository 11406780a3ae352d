"""Emergency-type labels derived from the emergency department's diagnosis text.

The KTAS data set records a free-text diagnosis, not an emergency type, so the type labels the models
learn are derived here by keyword and are only as good as this map. The rules are checked in this
order and the first match wins:

1. trauma: the diagnosis names an injury (fracture, laceration, contusion, traumatic ...);
2. cardiac: ischaemia, infarction, arrhythmia, heart failure, cardiac arrest, syncope, shock ...;
3. neurological: stroke, intracranial haemorrhage, seizure, TIA, palsy, altered consciousness ...;
4. respiratory: pneumonia, asthma, COPD, dyspnoea, pulmonary embolism, pneumothorax ...;
5. sepsis: sepsis and focal infections (cellulitis, abscess, pyelonephritis, cholangitis ...);
6. trauma again when the visit's injury flag is set and nothing above matched;
7. other.
"""

from __future__ import annotations

import re

from protocol import EmergencyType

_RULES: tuple[tuple[EmergencyType, tuple[str, ...]], ...] = (
    (
        EmergencyType.TRAUMA,
        (
            r"fracture",
            r"laceration",
            r"open wound",
            r"contusion",
            r"injury",
            r"injuries",
            r"trauma\w*",
            r"sprain",
            r"strain",
            r"dislocation",
            r"burn",
            r"abrasion",
            r"amputation",
            r"concussion",
            r"avulsion",
            r"bites?",
            r"stings?",
        ),
    ),
    (
        EmergencyType.CARDIAC,
        (
            r"myocardial infarction",
            r"angina",
            r"coronary",
            r"ischa?emic chest pain",
            r"chest pain",
            r"atrial fibrillation",
            r"atrial flutter",
            r"tachycardia",
            r"bradycardia",
            r"atrioventricular block",
            r"heart failure",
            r"cardiac arrest",
            r"cardiomyopathy",
            r"pericardial",
            r"palpitations?",
            r"brugada",
            r"syncope",
            r"presyncope",
            r"collapse",
            r"shock",
            r"hypotension",
            r"hypertension",
            r"aortic aneurysm",
            r"deep vein thrombosis",
        ),
    ),
    (
        EmergencyType.NEUROLOGICAL,
        (
            r"cerebral infarction",
            r"stroke",
            r"cerebrovascular",
            r"intracerebral",
            r"subarachnoid",
            r"intracranial",
            r"transient (cerebral )?isch\w+ attack",
            r"seizure",
            r"convuls\w*",
            r"epilep\w*",
            r"hydrocephalus",
            r"encephalopathy",
            r"palsy",
            r"dysarthria",
            r"paresthesia",
            r"guillain",
            r"amnesia",
            r"stupor",
            r"confusion",
            r"headache",
            r"migraine",
            r"diplopia",
            r"optic neuritis",
            r"parkinson\w*",
            r"dementia",
            r"meningioma",
            r"brain",
            r"carotid artery occlusion",
            r"borderzone infarction",
            r"cord compression",
            r"numbness",
            r"cerebral atherosclerosis",
        ),
    ),
    (
        EmergencyType.RESPIRATORY,
        (
            r"pneumonia",
            r"asthma",
            r"obstructive pulmonary",
            r"dyspno?ea",
            r"respiratory",
            r"bronch\w*",
            r"pneumothorax",
            r"pleural",
            r"pulmonary",
            r"ha?emoptysis",
            r"cough",
            r"hyperventilation",
            r"epiglottitis",
            r"laryngitis",
            r"influenza",
            r"lung",
        ),
    ),
    (
        EmergencyType.SEPSIS,
        (
            r"seps\w*",
            r"septic",
            r"fever",
            r"infection",
            r"infectious",
            r"infective",
            r"cellulitis",
            r"abscess",
            r"pyelonephritis",
            r"cholangitis",
            r"cystitis",
            r"peritonitis",
            r"empyema",
            r"cholecystitis",
            r"appendicitis",
            r"diverticulitis",
            r"viral",
            r"hiv",
        ),
    ),
)

_COMPILED = tuple(
    (emergency_type, re.compile(r"\b(?:" + "|".join(patterns) + r")\b", re.IGNORECASE))
    for emergency_type, patterns in _RULES
)


def emergency_type_label(diagnosis: str, injury: bool) -> EmergencyType:
    """Derive the emergency type of a visit from its diagnosis text and injury flag."""
    for emergency_type, pattern in _COMPILED:
        if pattern.search(diagnosis):
            return emergency_type
    if injury:
        return EmergencyType.TRAUMA
    return EmergencyType.OTHER
