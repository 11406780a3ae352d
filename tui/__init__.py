"""Textual terminal for the crew in the back of the ambulance: `ambulance-terminal` (see `tui.app`)."""
