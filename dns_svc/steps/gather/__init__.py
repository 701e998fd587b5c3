from dns_svc.steps.gather.step import Cluster, GatherStep, parse_cluster

__all__ = ["Cluster", "GatherStep", "parse_cluster"]
