"""Fixtures shared with the integration tests: the hub scorer, loaded once per session."""

from tests.integration.conftest import hub_scorer  # noqa: F401
