"""The cost of a gathered (federated) query against a plain forwarded one.

Two clusters, each a real unbound on its own loopback address (CPU 1, with dnsperf); metadns on
CPU 0 with --gather over both and the first cluster as its default upstream. With the cache off,
every gathered SRV question costs two sub-queries, a merge and a rewrite; every forwarded one a
relay. With the cache on, both are answered from cached bytes.

    .venv/bin/python bench/gather_cost.py [--duration 5]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dns_compare import Processes, dnsperf, free_port, unbound_conf, wait_udp


def cluster_zone(domain: str, host: str, ip: str) -> str:
    return "\n".join(
        f"  {x}"
        for x in [
            'local-zone: "." static',
            f'local-zone: "{domain}." static',
            f'local-data: "{domain}. 3600 IN SOA ns.{domain}. a.{domain}. 1 3600 600 86400 30"',
            f'local-data: "_http._tcp.demo.svc.{domain}. 30 IN SRV 0 50 8080 {host}.svc.{domain}."',
            f'local-data: "{host}.svc.{domain}. 30 IN A {ip}"',
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=5.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        procs = Processes()
        try:
            ports = []
            for host, domain, name, ip in (
                ("127.0.0.2", "cluster-a.local", "demo-0", "10.1.0.10"),
                ("127.0.0.3", "cluster-b.local", "demo-1", "10.2.0.11"),
            ):
                port = free_port(host)  # free there, for UDP and TCP
                conf = unbound_conf(work, port, cluster_zone(domain, name, ip)).read_text()
                conf_path = work / f"{domain}.conf"
                conf_path.write_text(conf.replace(f"127.0.0.1@{port}", f"{host}@{port}"))
                procs.start(["unbound", "-d", "-c", str(conf_path)], 1, work / f"{domain}.log")
                ports.append((host, port))
            queries = {"gathered": work / "gathered.txt", "forwarded": work / "forwarded.txt"}
            queries["gathered"].write_text("_http._tcp.demo.svc.distributed.local SRV\n")
            queries["forwarded"].write_text("_http._tcp.demo.svc.cluster-a.local SRV\n")
            print("| cache | query | qps | avg latency | gathered / forwarded |")
            print("|---|---|--:|--:|--:|")
            for cache in ("off", "on"):
                dns_port = free_port()
                (a_host, a_port), (b_host, b_port) = ports
                proc = procs.start(
                    [
                        sys.executable,
                        "-m",
                        "dns_svc",
                        f"--listen=127.0.0.1:{dns_port}",
                        "--metadata-url=",
                        "--state-file=",
                        "--log-level=warning",
                        f"--recurse={a_host}:{a_port}",
                        "--gather=distributed.local.",
                        f"--cluster=cluster-a.local.=a-@{a_host}:{a_port}",
                        f"--cluster=cluster-b.local.=b-@{b_host}:{b_port}",
                        f"--cache-capacity={0 if cache == 'off' else 10000}",
                    ],
                    0,
                    work / f"dns-{cache}.log",
                )
                wait_udp(dns_port, b"\x05_http\x04_tcp\x04demo\x03svc\x09cluster-a\x05local\x00")
                results = {}
                for kind, path in queries.items():
                    dnsperf(dns_port, path, 2, 1)
                    qps, avg, _lost, _ = dnsperf(dns_port, path, args.duration, 1)
                    results[kind] = (qps, avg)
                for kind in ("forwarded", "gathered"):
                    qps, avg = results[kind]
                    ratio = results["gathered"][0] / results["forwarded"][0] if kind == "gathered" else 1.0
                    print(f"| {cache} | {kind} | {qps:,.0f} | {avg * 1000:.2f} ms | {ratio:.2f}x |", flush=True)
                proc.terminate()
                proc.wait()
        finally:
            procs.stop_all()


if __name__ == "__main__":
    main()
