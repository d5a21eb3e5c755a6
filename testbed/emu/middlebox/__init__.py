"""A transparent middlebox process for emulated links (see core.py)."""
