"""The hostile suite: the daemon attacked as an internet peer would attack it.

One module per surface (connections, overload, media, parsing, impairment); each
starts the daemon as a process on loopback, runs one bounded attack and asserts
measured figures (descriptors, memory, loss, latency, counters), not survival alone.
"""
