from dns_svc.steps.upstream.pool import UpstreamPool

__all__ = ["UpstreamPool"]
