"""Cached replies as wire bytes, and the one store that bounds them all."""

from dns_svc.replies.entry import NOT_LOCAL, CachedReply
from dns_svc.replies.packets import PacketCache
from dns_svc.replies.store import CacheKey, ClientCaches, ReplyCache, ReplyStore, cache_key, global_key, shared_serves

__all__ = [
    "NOT_LOCAL",
    "CacheKey",
    "CachedReply",
    "ClientCaches",
    "PacketCache",
    "ReplyCache",
    "ReplyStore",
    "cache_key",
    "global_key",
    "shared_serves",
]
