"""Chief-complaint normalisation and symptom groups.

Crews and triage nurses write complaints in short clinical English with abbreviations ("abd pain",
"HA", "LOC", "Lt. side weakness"). `normalize_complaint` expands the common abbreviations, and
`complaint_groups` maps the text to symptom groups the models use as inputs. Matching is on whole
words after normalisation, so "ha" never matches inside "chair".
"""

from __future__ import annotations

import functools
import re

# Abbreviation -> expansion, applied to whole words of the lower-cased text.
ABBREVIATIONS: dict[str, str] = {
    "abd": "abdominal",
    "abdomen": "abdominal",
    "lt": "left",
    "rt": "right",
    "rigth": "right",
    "ha": "headache",
    "loc": "loss of consciousness",
    "dz": "dizziness",
    "lbp": "low back pain",
    "gw": "general weakness",
    "sx": "symptom",
    "fb": "foreign body",
    "lac": "laceration",
    "movt": "movement",
    "fc": "fever chill",
    "cs": "cough sputum",
    "bst": "blood sugar",
    "di": "drug intoxication",
    "ruq": "right upper quadrant abdominal",
    "rlq": "right lower quadrant abdominal",
    "luq": "left upper quadrant abdominal",
    "llq": "left lower quadrant abdominal",
    "sob": "shortness of breath",
    "cpr": "cardiopulmonary resuscitation",
    "mva": "motor vehicle accident",
    "tia": "transient ischemic attack",
    "sezure": "seizure",
    "dyspnoea": "dyspnea",
}

# Group -> word patterns (regular expressions matched against the normalised text, on word bounds).
SYMPTOM_GROUPS: dict[str, tuple[str, ...]] = {
    "chest_pain": (r"chest (pain|discomfort|tightness)", r"chest wall pain", r"angina"),
    "palpitation": (r"palpitation", r"tachycardia", r"irregular (pulse|heart)"),
    "breathlessness": (
        r"dyspnea",
        r"orthopnea",
        r"shortness of breath",
        r"breath(ing)? difficult\w*",
        r"wheez\w*",
        r"cough\w*",
        r"hemoptysis",
        r"sputum",
    ),
    "altered_mental_state": (
        r"mental (change|confusion|status)",
        r"altered mental\w*",
        r"confus\w*",
        r"loss of consciousness",
        r"syncope",
        r"near syncope",
        r"unconscious\w*",
        r"stupor",
        r"sleeping tendency",
        r"drows\w*",
        r"amnesia",
        r"cardiopulmonary resuscitation",
        r"drunken",
        r"alcohol",
        r"drug intoxication",
        r"intoxication",
    ),
    "stroke_signs": (
        r"(side|motor|arm|leg|limb) weakness",
        r"hemiparesis",
        r"monoparesis",
        r"paraparesis",
        r"dysarthria",
        r"aphasia",
        r"facial (palsy|numbness|droop)",
        r"(side|arm|facial) numbness",
        r"diplopia",
        r"visual disturbance",
        r"slurred speech",
    ),
    "seizure": (r"seizure", r"convulsion", r"involuntary movement"),
    "gi_bleeding": (r"hematemesis", r"melena", r"hematochezia", r"anal bleeding", r"bloody stool"),
    "abdominal_pain": (
        r"abdominal (pain|discomfort|distension)",
        r"epigastric",
        r"flank pain",
        r"periumbilical",
        r"distended abdominal",
        r"distension",
        r"quadrant abdominal",
    ),
    "vomiting_diarrhea": (r"vomiting", r"nausea", r"diarrhea"),
    "fever": (r"fever", r"chill\w*", r"febrile"),
    "injury": (
        r"injur\w*",
        r"laceration",
        r"wound",
        r"trauma",
        r"burn",
        r"fracture",
        r"dislocation",
        r"sting",
        r"bite",
        r"foreign body",
        r"contusion",
        r"concussion",
        r"fall",
        r"accident",
        r"sexual (violence|abuse)",
        r"amputation",
    ),
    "headache": (r"headache", r"head pain"),
    "dizziness": (r"dizziness", r"vertigo", r"giddiness"),
    "weakness": (r"general weakness", r"weakness", r"general ache", r"decreased activity"),
    "bleeding": (
        r"vaginal (bleeding|spotting)",
        r"epistaxis",
        r"nasal bleeding",
        r"gingival bleeding",
        r"oral bleeding",
        r"bleeding",
    ),
    "psychiatric": (
        r"suicid\w*",
        r"depression",
        r"anxiety",
        r"delusion\w*",
        r"hallucination",
        r"panic",
    ),
    "hypotension": (r"blood pressure,? low", r"hypotension", r"shock"),
    "urinary": (
        r"dysuria",
        r"voiding \w+",
        r"\w+ voiding",
        r"hematuria",
        r"oliguria",
        r"retention",
        r"urinary \w+",
    ),
    "musculoskeletal_pain": (
        r"(back|leg|arm|knee|ankle|shoulder|hip|wrist|neck|foot|hand|finger|thigh|forearm|elbow|"
        r"joint|coccygeal|mandibular|chin) pain",
        r"backache",
        r"myalgia",
        r"swelling",
    ),
    "skin_allergy": (
        r"rash",
        r"urticari\w*",
        r"itching",
        r"eruption",
        r"allergy",
        r"angioedema",
        r"skin \w+",
    ),
    "eye_ent": (
        r"ocular",
        r"eye \w+",
        r"otalgia",
        r"throat",
        r"sorethroat",
        r"vision",
        r"visual acuity",
        r"toothache",
        r"tooth",
        r"dental",
    ),
    "glucose": (r"hypoglycemi\w*", r"blood sugar", r"hyperglycemi\w*"),
    "procedure_request": (
        r"tapping",
        r"tube (change|insertion)",
        r"catheter",
        r"malfunction",
        r"copy",
        r"medication",
        r"injection",
        r"abnormal lab",
        r"removal",
    ),
}

GROUP_NAMES: tuple[str, ...] = tuple(SYMPTOM_GROUPS)

_COMPILED = {
    group: re.compile(r"\b(?:" + "|".join(patterns) + r")\b") for group, patterns in SYMPTOM_GROUPS.items()
}
_WORD = re.compile(r"[a-z]+")
# "pain, chest" and "discomfort, chest" are written noun-first; put the body part first.
_INVERTED = re.compile(r"^(pain|discomfort|distension|injury|swelling|bleeding|burn|numbness) (.+)$")


def normalize_complaint(text: str) -> str:
    """Lower-case the complaint, drop punctuation and expand abbreviations word by word."""
    lowered = text.lower().replace("g/w", "gw").replace("f/c", "fc").replace("c/s", "cs")
    words = [ABBREVIATIONS.get(word, word) for word in _WORD.findall(lowered)]
    normalized = " ".join(words)
    inverted = _INVERTED.match(normalized)
    if inverted:
        normalized = f"{inverted.group(2)} {inverted.group(1)}"
    return normalized


@functools.lru_cache(maxsize=8192)
def complaint_groups(text: str | None) -> frozenset[str]:
    """Return the symptom groups a chief complaint belongs to (empty for None or unknown text)."""
    if not text:
        return frozenset()
    normalized = normalize_complaint(text)
    return frozenset(group for group, pattern in _COMPILED.items() if pattern.search(normalized))
