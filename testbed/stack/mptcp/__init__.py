"""MPTCP v1 (RFC 8684), the layer above TCP: option codecs (`options`), keys, tokens, HMACs
and checksums (`crypto`), the connection and its subflows (`connection`), the host-level
stack (`stack`), DSS mapping bookkeeping (`mapping`), and schedulers and path managers
registered by name (`scheduler`, `pm`). TCP never imports this package; MPTCP reaches
subflows only through `testbed.stack.tcp.hooks`."""
