from dns_svc.steps.cache.entry import NOT_LOCAL, CachedReply
from dns_svc.steps.cache.step import CacheKey, ClientCacheStep, GlobalCacheStep, ReplyCache, cache_key

__all__ = ["NOT_LOCAL", "CacheKey", "CachedReply", "ClientCacheStep", "GlobalCacheStep", "ReplyCache", "cache_key"]
