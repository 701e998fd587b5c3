"""deploy/grafana-dashboard.json graphs only what the services export: every metric its queries
name is scraped here from a real DNS service (with traffic of each kind) and a real metadata
service following a real etcd. A renamed metric fails this test, not a dashboard in production."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest
import yaml

from consumers.fleet_command import fleet_main
from dns_svc.follower import version_index
from metadata_svc.keys import STORE
from tests.support.dns import ask, run_dns, wait_for_version
from tests.support.etcd import run_etcd
from tests.support.metadata import run_metadata
from tests.support.metrics import sample_names, scrape
from tests.support.ports import free_port

pytestmark = pytest.mark.external_tool

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana-dashboard.json"
PREFIX = "/metadns/dashboard/"


def dashboard_metrics() -> set[str]:
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in board["panels"] for t in panel.get("targets", [])]
    assert exprs, "the dashboard has no queries"
    return {name for expr in exprs for name in re.findall(r"\bmetadns_[a-z0-9_]+", expr)}


async def test_every_metric_the_dashboard_uses_is_exported(tmp_path: Path, unbound) -> None:
    fleet = {
        "stacks": [{"name": "shop"}],
        "services": [{"name": "web", "stack_name": "shop"}],
        "containers": [{"name": "web-1", "stack_name": "shop", "service_name": "web", "primary_ip": "127.0.0.11"}],
    }
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(fleet))
    with run_etcd(tmp_path / "etcd") as cluster:
        code = await asyncio.to_thread(
            fleet_main, ["apply", "--etcd", cluster.endpoints, "--prefix", PREFIX, str(path)]
        )
        assert code == 0
        dead = ("127.0.0.1", free_port())
        async with (
            run_metadata(tmp_path / "unused.yaml", source=f"etcd://{cluster.endpoints}{PREFIX}") as md,
            run_dns(
                metadata_url=f"{md.url}/2016-07-29", recurse=(dead, unbound.address), http_host="127.0.0.1", http_port=0
            ) as dns,
        ):
            await wait_for_version(dns, version_index(md.app[STORE].snapshot.version))
            for name in ("web.shop.rancher.internal", "web.shop.rancher.internal", "www.example.test"):
                await ask(dns, name)
            await ask(dns, "web.shop.rancher.internal", tcp=True)
            assert dns.http_address is not None
            exported = sample_names(await scrape(f"http://{dns.http_address[0]}:{dns.http_address[1]}/metrics"))
            exported |= sample_names(await scrape(f"{md.url}/metrics"))
    # the parent of --workers adds metadns_dns_worker_up (tests/test_dns_metrics.py scrapes it)
    exported.add("metadns_dns_worker_up")
    used = dashboard_metrics()
    assert used - exported == set()
    assert len(used) >= 30  # the whole service, not a token panel
