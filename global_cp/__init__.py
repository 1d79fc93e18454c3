"""Global control plane: the operators' single API for meshes and policies, federating zones over etcd.

Built by the multi-zone issue; see docs/architecture.md for the keyspace it will own.
"""
