"""Resource stores: one interface (`ResourceStore`), an in-memory and an etcd backend."""

from meshcast.store.base import EventKind, ListResult, ResourceChanged, ResourceStore, WatchCompacted
from meshcast.store.memory import MemoryStore

__all__ = ["EventKind", "ListResult", "MemoryStore", "ResourceChanged", "ResourceStore", "WatchCompacted"]
