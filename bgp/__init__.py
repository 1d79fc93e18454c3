"""Anycast: the BGP speaker that ExaBGP runs as a `process`, announcing a region's prefixes while its gateway is
ready. Built by the anycast issue."""
