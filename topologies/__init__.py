"""Mininet topologies: pure descriptions, parameters as arguments."""
