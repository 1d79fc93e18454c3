"""HTTP/2 for the data plane: connections over trio (h2 as the protocol), hardening, per-request proxying."""
