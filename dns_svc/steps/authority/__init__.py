from dns_svc.steps.authority.step import Authority

__all__ = ["Authority"]
