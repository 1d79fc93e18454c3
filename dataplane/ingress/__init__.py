"""The zone ingress: accepts mTLS connections from sidecars in other zones and routes each, by the SNI of its
ClientHello, to a local endpoint of the named service, without terminating TLS.

`sni` parses the ClientHello (pure), `meshcast.wire.sni` is the SNI naming scheme for cross-zone traffic, `router`
reads the hello from a connection, dials an endpoint and splices the bytes, and `stats` counts connections and bytes
per destination service.
"""
