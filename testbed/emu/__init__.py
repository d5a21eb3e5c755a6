"""Emulation layer: Mininet nodes, shaped links and their backends, capture, cleanup."""
