"""Drivers that prepare a network stack (kernel MPTCP, plain TCP, ours) on emulated hosts."""
