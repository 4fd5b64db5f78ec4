"""Layers shared by the families."""
