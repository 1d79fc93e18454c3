"""The global keyspace shared by the global control plane and the zone control planes (design.md, "Federation
over etcd"): its prefixes, key names and the pure parsing of what zones publish."""
