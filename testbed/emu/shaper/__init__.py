"""Userspace link shaper: a sans-I/O pipe model and the process that moves TAP frames."""
