from dns_svc.steps.cache.step import ClientCacheStep, GlobalCacheStep

__all__ = ["ClientCacheStep", "GlobalCacheStep"]
