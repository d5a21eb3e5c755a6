"""MPTCP v1 (RFC 8684), the layer above TCP: option codecs (`options`) and the keys, tokens,
HMACs and checksums (`crypto`). TCP never imports this package; MPTCP reaches subflows only
through `testbed.stack.tcp.hooks`."""
