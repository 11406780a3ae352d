"""Textual terminal for the crew in the back of the ambulance (not built yet)."""
