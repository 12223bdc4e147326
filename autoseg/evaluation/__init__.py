"""Metrics on label maps; needs nothing but the label maps."""
