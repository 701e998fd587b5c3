"""Settings of the DNS service, from flags and their ``METADNS_DNS_*`` twins."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from dns_svc.answers import Upstream, parse_upstream
from dns_svc.follower import STARTUP_GRACE
from dns_svc.resolver import DEFAULT_ALLOW
from dns_svc.steps.gather.step import Cluster, parse_cluster
from dns_svc.wire import EDNS_UDP_SIZE
from shared.settings import FlagParser, parse_host_port

DESCRIPTION = """\
Per-host DNS for a container fleet: fleet names answered locally from the metadata service,
everything else relayed to upstream resolvers, with per-client and global caches.

  dig @HOST web.shop.rancher.internal            # a service: its healthy containers
  dig @HOST _web._tcp.shop.rancher.internal SRV  # one SRV per healthy container
  dig @HOST -x 10.42.0.11                        # PTR of a container

Point containers' resolv.conf at it (nameserver 169.254.169.250).
"""


@dataclass(frozen=True)
class DnsSettings:
    host: str = "127.0.0.1"
    port: int = 0
    metadata_url: str = ""
    answers: str = ""
    recurse: tuple[Upstream, ...] = ()
    recurse_from_resolv_conf: bool = False
    domain: str = "rancher.internal"
    ttl: int = 1
    cache_capacity: int = 100000
    serve_stale: float = 86400.0
    stale_answer_timeout: float = 1.8
    max_udp_size: int = EDNS_UDP_SIZE
    drain_timeout: float = 5.0
    lameduck: float = 0.0
    tcp_max_connections: int = 512
    tcp_per_client: int = 16
    tcp_idle_timeout: float = 10.0
    cache_max_ttl: float = 3600.0
    servfail_ttl: float = 2.0
    recurser_timeout: float = 2.0
    ndots: int = 0
    allow_recursion: tuple[str, ...] = DEFAULT_ALLOW
    metadata_answer: tuple[str, ...] = ("169.254.169.250",)
    never_recurse_to: tuple[str, ...] = ("169.254.169.250",)
    state_file: str = ""
    resolv_conf: str = "/etc/resolv.conf"
    max_wait: int = 30
    metadata_grace: float = STARTUP_GRACE
    log_level: str = "info"
    log_queries: bool = False
    workers: int = 1
    reuse_port: bool = False
    gather_domain: str = ""
    clusters: tuple[Cluster, ...] = ()
    gather_timeout: float = 1.0
    http_host: str = ""
    http_port: int = 0
    http_unix: str = ""  # a worker's /metrics and /healthz, on a Unix socket its parent reads
    gc_freeze_interval: float = 5.0
    gc_full_interval: float = 3600.0


def resolv_conf_upstreams(path: str, never: tuple[str, ...]) -> tuple[Upstream, ...]:
    """The host's nameservers, minus loopback (a stub like 127.0.0.53 is not reachable from a
    container's namespace) and minus our own address (no loops)."""
    out: list[Upstream] = []
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return ()
    for line in lines:
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            try:
                addr = ipaddress.ip_address(parts[1].split("%", 1)[0])
            except ValueError:
                continue
            if addr.is_loopback or str(addr) in never:
                continue
            out.append((str(addr), 53))
    return tuple(out)


def parse_settings(argv: list[str] | None = None) -> DnsSettings:
    p = FlagParser("METADNS_DNS", prog="dns-svc", description=DESCRIPTION)
    p.flag("--listen", default="169.254.169.250:53", help="HOST:PORT for UDP and TCP; port 0 picks a free port")
    p.flag(
        "--metadata-url",
        default="http://169.254.169.250/2016-07-29",
        help="metadata service base URL to follow ('' to run on --answers only)",
    )
    p.flag(
        "--metadata-grace",
        default=STARTUP_GRACE,
        type=float,
        help="seconds metadata may stay unreachable at start (services started together) before it is "
        "logged as an error; until then the retries are debug lines (0: at once). Once reached, a loss is "
        "logged at once",
    )
    p.flag("--answers", default="", help="rancher-dns answers file (JSON or YAML) to serve instead of metadata")
    p.flag(
        "--recurse",
        action="append",
        metavar="IP[:PORT]",
        help="upstream resolver, repeatable (default: the host's resolv.conf nameservers)",
    )
    p.flag("--never-recurse-to", default="169.254.169.250", help="comma list of addresses never used as upstream")
    p.flag("--domain", default="rancher.internal", help="the fleet's DNS zone")
    p.flag("--ttl", default=1, type=int, help="TTL in seconds of local answers (and the SOA minimum)")
    p.flag(
        "--cache-capacity",
        default=100000,
        type=int,
        help="cached replies in all (upstream, shared local and every client's) together, least recently "
        "used out first; about 0.75 KB each; 0 disables",
    )
    p.flag(
        "--serve-stale",
        default=86400.0,
        type=float,
        help="seconds past its expiry an upstream answer may still be served while the upstreams fail "
        "(RFC 8767); 0 disables",
    )
    p.flag(
        "--stale-answer-timeout",
        default=1.8,
        type=float,
        help="seconds to wait for an upstream before a stale answer is served (the client-response timer)",
    )
    p.flag(
        "--max-udp-size",
        default=EDNS_UDP_SIZE,
        type=int,
        help="cap in bytes on UDP replies whatever size the client advertises (larger: TC, retry over TCP)",
    )
    p.flag(
        "--drain-timeout", default=5.0, type=float, help="seconds to finish queries in flight on SIGTERM before exiting"
    )
    p.flag(
        "--lameduck",
        default=0.0,
        type=float,
        help="seconds between /healthz failing and the listeners closing on SIGTERM, so an orchestrator "
        "stops sending first",
    )
    p.flag("--tcp-max-connections", default=512, type=int, help="TCP connections open at once")
    p.flag("--tcp-per-client", default=16, type=int, help="TCP connections open at once from one client address")
    p.flag(
        "--tcp-idle-timeout",
        default=10.0,
        type=float,
        help="seconds an idle TCP connection is kept (shorter when connections run short, RFC 7766)",
    )
    p.flag("--cache-max-ttl", default=3600.0, type=float, help="cap in seconds on how long upstream answers are cached")
    p.flag("--servfail-ttl", default=2.0, type=float, help="seconds a SERVFAIL is cached (0: never)")
    p.flag("--recurser-timeout", default=2.0, type=float, help="seconds per upstream attempt")
    p.flag("--ndots", default=0, type=int, help="try search suffixes only for names with fewer dots (0: always)")
    p.flag(
        "--allow-recursion",
        default=",".join(DEFAULT_ALLOW),
        help=(
            "comma list of client networks that may have queries sent out for them (upstream, gathered,"
            " a local CNAME chased); others get REFUSED instead, and local answers"
        ),
    )
    p.flag("--metadata-answer", default="169.254.169.250", help="comma list: A records of rancher-metadata.<domain>")
    p.flag(
        "--state-file",
        default="/var/lib/metadns/dns-last-good.json",
        help="last good fleet kept for restarts while metadata is down; '' disables",
    )
    p.flag("--resolv-conf", default="/etc/resolv.conf", help="where default upstreams are read from")
    p.flag(
        "--gather",
        default="",
        metavar="DOMAIN",
        help="a distributed domain whose SRV/A/AAAA/TXT questions are gathered from every --cluster",
    )
    p.flag(
        "--cluster",
        action="append",
        metavar="DOMAIN=PREFIX@IP[:PORT][,IP[:PORT]]",
        env_separator=";",
        help="a cluster of the --gather domain: its domain, hostname prefix and servers; repeatable "
        "(env: ';'-separated)",
    )
    p.flag("--gather-timeout", default=1.0, type=float, help="seconds to wait for the clusters' answers")
    p.flag("--http-listen", default="", help="HOST:PORT for /metrics (Prometheus) and /healthz; '' disables")
    p.flag(
        "--workers",
        default=1,
        type=int,
        help="processes sharing the port with SO_REUSEPORT, each following metadata itself (needs a fixed port)",
    )
    p.flag(
        "--gc-freeze-interval",
        default=5.0,
        type=float,
        help="seconds between moving surviving objects (the caches) out of the garbage collector's "
        "full passes, which would otherwise pause for ~0.3 us per cached reply; 0 disables",
    )
    p.flag(
        "--gc-full-interval",
        default=3600.0,
        type=float,
        help="seconds between full garbage collections over everything, frozen or not; 0: never",
    )
    p.flag("--log-level", default="info", choices=("debug", "info", "warning", "error"), help="how much to log")
    p.flag(
        "--log-queries",
        action="store_true",
        help="log every query and its answer (one debug line each, whatever --log-level says); costs throughput",
    )
    ns = p.parse_flags(argv)
    if ns.workers < 1:
        p.error("--workers must be at least 1")
    if not 512 <= ns.max_udp_size <= 65535:
        p.error("--max-udp-size must be between 512 and 65535")
    if ns.tcp_max_connections < 1 or ns.tcp_per_client < 1:
        p.error("--tcp-max-connections and --tcp-per-client must be at least 1")
    try:
        host, port = parse_host_port(ns.listen, 53)
        recurse_flags = tuple(parse_upstream(r) for r in ns.recurse)
        never = tuple(str(ipaddress.ip_address(x.strip())) for x in ns.never_recurse_to.split(",") if x.strip())
        allow = tuple(x.strip() for x in ns.allow_recursion.split(",") if x.strip())
        for net in allow:
            ipaddress.ip_network(net, strict=False)
        answer = tuple(str(ipaddress.ip_address(x.strip())) for x in ns.metadata_answer.split(",") if x.strip())
        clusters = tuple(parse_cluster(c) for c in ns.cluster)
        http_host, http_port = parse_host_port(ns.http_listen, 9153) if ns.http_listen else ("", 0)
    except ValueError as exc:
        p.error(str(exc))
    if ns.metadata_url and not ns.answers:
        url = urlsplit(ns.metadata_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            p.error(f"--metadata-url {ns.metadata_url!r}: give http://HOST[:PORT]/2016-07-29 (or '' with --answers)")
    if ns.gather and not clusters:
        p.error("--gather needs at least one --cluster")
    if ns.workers > 1 and port == 0:
        p.error("--workers needs a fixed port in --listen: workers cannot share port 0")
    never = (*never, host)
    flagged = tuple(u for u in recurse_flags if u[0] not in never[:-1])
    recurse = flagged or resolv_conf_upstreams(ns.resolv_conf, never)
    return DnsSettings(
        host=host,
        port=port,
        metadata_url="" if ns.answers else ns.metadata_url,
        metadata_grace=ns.metadata_grace,
        answers=ns.answers,
        recurse=recurse,
        recurse_from_resolv_conf=not flagged,
        domain=ns.domain,
        ttl=ns.ttl,
        cache_capacity=ns.cache_capacity,
        serve_stale=ns.serve_stale,
        stale_answer_timeout=ns.stale_answer_timeout,
        max_udp_size=ns.max_udp_size,
        drain_timeout=ns.drain_timeout,
        lameduck=ns.lameduck,
        tcp_max_connections=ns.tcp_max_connections,
        tcp_per_client=ns.tcp_per_client,
        tcp_idle_timeout=ns.tcp_idle_timeout,
        cache_max_ttl=ns.cache_max_ttl,
        servfail_ttl=ns.servfail_ttl,
        recurser_timeout=ns.recurser_timeout,
        ndots=ns.ndots,
        allow_recursion=allow,
        metadata_answer=answer,
        never_recurse_to=never,
        state_file=ns.state_file,
        resolv_conf=ns.resolv_conf,
        log_level=ns.log_level,
        log_queries=ns.log_queries,
        workers=ns.workers,
        gather_domain=ns.gather,
        clusters=clusters,
        gather_timeout=ns.gather_timeout,
        http_host=http_host,
        http_port=http_port,
        gc_freeze_interval=ns.gc_freeze_interval,
        gc_full_interval=ns.gc_full_interval,
    )
