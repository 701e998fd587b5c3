from dns_svc.steps.local.step import LocalAnswers

__all__ = ["LocalAnswers"]
