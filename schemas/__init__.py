"""Pydantic v2 models: input events, dead letters, customer profiles and alerts."""
