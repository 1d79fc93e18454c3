"""Anycast: the BGP speaker that ExaBGP runs as its `process`, announcing a region's prefixes while its gateway is
ready (docs/anycast.md).

- `settings`: a region's settings, checked field by field (pure).
- `fsm`: rise/fall, drain and flap damping as a table-driven state machine (pure).
- `commands`: ExaBGP's text API, commands out and answers in, without IO (pure).
- `render`: exabgp.conf from the settings (pure).
- `regions`: the cross-region check that refuses a change leaving a prefix uncovered (pure but for reading files).
- `status`: the speaker's status file, written atomically, and its text form.
- `speaker`: the only IO: probes the gateway, drives the machine, talks to ExaBGP.
"""
