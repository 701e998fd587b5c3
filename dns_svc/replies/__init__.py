"""Cached replies as wire bytes, and the one store that bounds them all."""

from dns_svc.replies.entry import NOT_LOCAL, CachedReply
from dns_svc.replies.store import CacheKey, ClientCaches, ReplyCache, ReplyStore, cache_key, global_key

__all__ = [
    "NOT_LOCAL",
    "CacheKey",
    "CachedReply",
    "ClientCaches",
    "ReplyCache",
    "ReplyStore",
    "cache_key",
    "global_key",
]
