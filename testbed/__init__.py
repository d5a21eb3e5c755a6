"""MPTCP emulation testbed: emulation, stacks and the runtime around them."""
