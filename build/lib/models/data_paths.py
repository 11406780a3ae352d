"""Where the clinical data sets are: $AMBULANCE_DATA_DIR, else a `shared/data` folder beside the checkout."""

from __future__ import annotations

import os
from pathlib import Path

DATA_DIR_ENV = "AMBULANCE_DATA_DIR"
KTAS_FILE = Path("ktas") / "triage-moon-2019.csv"
PHYSIONET_DIR = Path("physionet-2012") / "set-a"
PHYSIONET_OUTCOMES = Path("physionet-2012") / "Outcomes-a.txt"

_PROJECT_DIR = Path(__file__).resolve().parents[1]


def default_data_dir() -> Path:
    """Return $AMBULANCE_DATA_DIR if set, else the first `shared/data` beside the project or above it.

    Falls back to `../shared/data` (which may not exist) so error messages name a concrete path.
    """
    configured = os.environ.get(DATA_DIR_ENV)
    if configured:
        return Path(configured)
    for ancestor in _PROJECT_DIR.parents:
        candidate = ancestor / "shared" / "data"
        if (candidate / KTAS_FILE).is_file():
            return candidate
    return _PROJECT_DIR.parent / "shared" / "data"
