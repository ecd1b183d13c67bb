"""`make bench`: the service's throughput, latency and memory next to the ceilings of its dependencies.

Every figure is taken in one run on one machine: a bare consume loop, a bare Avro decode loop and a bare
binary-COPY sink give the ceilings; the service's own decoder and sink run beside them on the same data,
and `python -m consumer run` drains the same backlog as a subprocess, watched from outside.
"""
