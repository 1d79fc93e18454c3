"""The data plane: the sidecar proxy (trio + h2), also run as zone ingress and edge gateway.

Built by the data-plane issue. It talks to its zone CP only through `meshcast.wire` (registration, certificates,
config stream).
"""
