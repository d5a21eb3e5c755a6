"""Our userspace protocol core, sans-I/O: wire codecs, TCP, (later) MPTCP.

No sockets, no clocks, no randomness of its own, no threads: every entry point takes `now`
(seconds) and randomness comes from a seeded generator passed in. Layers: `wire` (codecs),
`tcp` (never imports `mptcp`), `mptcp` (above TCP, through TCP's hooks).
"""
