"""TCP (RFC 9293): segments in, segments out, driven by `now`; knows nothing of MPTCP."""
