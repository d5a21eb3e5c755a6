"""Wire codecs: parse and emit Ethernet, ARP, IPv4, ICMP and TCP. Every parser raises
`ParseError` (and nothing else) on malformed input."""
