"""The device's way to an edge: ``client`` (one aiohttp WebSocket session, all sends through one
method), ``discovery`` (zeroconf browsing, ranking by load and RTT), ``placement`` (which of
several edges a new session goes to: the expected wait) and ``local`` (an ``edge-server``
child process on 127.0.0.1 for the demo and the benchmarks)."""
