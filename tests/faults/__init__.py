"""Fault injection for tests: a TCP proxy between clients and the broker that can break the link."""
