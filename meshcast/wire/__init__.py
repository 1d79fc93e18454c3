"""Wire formats between processes: the config stream (zone CP <-> sidecar) and, later, the etcd keyspace."""
