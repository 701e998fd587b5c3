"""Fleets for the DNS tests, built in code. Container IPs are loopback addresses so a test can
send its query *from* a container."""

from __future__ import annotations

from typing import Any

OWN_UPSTREAM_IP = "127.0.2.53"  # the per-client upstream of shop-cache-1 (port 53, started by the test)


def dns_fleet(many: int = 40) -> dict[str, Any]:
    containers: list[dict[str, Any]] = [
        {
            "name": "shop-web-1",
            "stack_name": "shop",
            "service_name": "web",
            "primary_ip": "127.0.0.11",
            "host_uuid": "host-a",
            "links": {"shop-db-1": "primary"},
        },
        {
            "name": "shop-web-2",
            "stack_name": "shop",
            "service_name": "web",
            "primary_ip": "127.0.0.12",
            "host_uuid": "host-a",
        },
        {
            "name": "shop-web-3",
            "stack_name": "shop",
            "service_name": "web",
            "primary_ip": "127.0.0.13",
            "host_uuid": "host-a",
            "health_state": "unhealthy",
        },
        {
            "name": "shop-web-1-log",
            "stack_name": "shop",
            "service_name": "log",
            "primary_ip": "127.0.0.14",
            "host_uuid": "host-a",
        },
        {
            "name": "shop-db-1",
            "stack_name": "shop",
            "service_name": "db",
            "primary_ip": "127.0.0.21",
            "host_uuid": "host-a",
        },
        {
            "name": "shop-cache-1",
            "stack_name": "infra",
            "service_name": "cache",
            "primary_ip": "127.0.0.31",
            "host_uuid": "host-a",
            "dns": [OWN_UPSTREAM_IP],
            "dns_search": ["infra.rancher.internal"],
        },
        {"name": "lonely", "primary_ip": "127.0.0.41", "host_uuid": "host-a"},
        {
            "name": "sick-1",
            "stack_name": "infra",
            "service_name": "sick",
            "primary_ip": "127.0.0.51",
            "health_state": "unhealthy",
            "create_index": 1,
        },
        {
            "name": "sick-2",
            "stack_name": "infra",
            "service_name": "sick",
            "primary_ip": "127.0.0.52",
            "health_state": "unhealthy",
            "create_index": 2,
        },
    ]
    containers += [
        {
            "name": f"many-{i}",
            "stack_name": "infra",
            "service_name": "many",
            "primary_ip": f"127.0.1.{i + 1}",
            "host_uuid": "host-a",
        }
        for i in range(many)
    ]
    return {
        "environment": {"name": "dns-test"},
        "hosts": [{"uuid": "host-a", "name": "host-a", "agent_ip": "127.0.0.1"}],
        "stacks": [{"name": "shop"}, {"name": "infra"}],
        "services": [
            {
                "name": "web",
                "stack_name": "shop",
                "ports": ["80:8080/tcp", "9090/udp"],
                "sidekicks": ["log"],
                "links": {"infra/cache": "kv"},
                "labels": {"tier": "front"},
            },
            {"name": "log", "stack_name": "shop"},
            {"name": "db", "stack_name": "shop", "ports": ["5432/tcp"]},
            {"name": "cache", "stack_name": "infra", "ports": ["11211/tcp"]},
            {"name": "sick", "stack_name": "infra"},
            {"name": "many", "stack_name": "infra", "ports": ["7000/tcp"]},
            {"name": "payments", "stack_name": "shop", "kind": "externalService", "hostname": "payments.example.test"},
            {
                "name": "legacy",
                "stack_name": "shop",
                "kind": "externalService",
                "external_ips": ["192.0.2.7", "192.0.2.8"],
            },
            {"name": "backend", "stack_name": "shop", "kind": "dnsService", "links": {"shop/web": "", "shop/db": ""}},
            {"name": "loop-a", "stack_name": "shop", "kind": "dnsService", "links": {"shop/loop-b": ""}},
            {"name": "loop-b", "stack_name": "shop", "kind": "dnsService", "links": {"shop/loop-a": ""}},
        ],
        "containers": containers,
    }
