"""Transport: mutual TLS contexts, identities, and (next) connection pools between sidecars."""
