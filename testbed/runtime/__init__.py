"""The runtime around the sans-I/O core: TAP devices, the event loop that feeds the core with
frames and time, the application API, pcap and stats writers. The only layer that reads the
clock or touches file descriptors."""
