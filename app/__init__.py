"""Ivy v2 AI router."""

__version__ = "2.0.0"
