"""Protocol tests: our stacks over the in-memory network of `netsim`, deterministic by seed."""
