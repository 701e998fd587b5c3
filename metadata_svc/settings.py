"""Settings of the metadata service, from flags and their ``METADNS_METADATA_*`` twins."""

from __future__ import annotations

from dataclasses import dataclass

from metadata_svc.identity import IPNetwork, parse_networks
from shared.etcd import add_etcd_flags
from shared.settings import FlagParser, parse_host_port

DESCRIPTION = """\
Serve the fleet (stacks, services, containers, hosts) over HTTP, rancher-metadata compatible.

  curl http://HOST/latest/self/container/name          # who am I (by source IP)
  curl -H 'Accept: application/json' http://HOST/latest/services
  curl 'http://HOST/latest/version?wait=true&value=V&maxWait=30'   # block until V changes

The fleet file is watched; a broken file is refused with one log line and the last good data
stays in service. SIGHUP re-reads it at once.
"""


@dataclass(frozen=True)
class MetadataSettings:
    host: str = "127.0.0.1"
    port: int = 0
    data: str = "examples/fleet.yaml"
    state_file: str = ""
    xff: bool = False
    xff_trusted: tuple[IPNetwork, ...] = parse_networks(["127.0.0.0/8", "::1/128"])
    max_wait: float = 120.0
    default_wait: float = 60.0
    poll_interval: float = 1.0
    watch: str = "auto"
    source: str = ""
    etcd_tls: bool = False
    etcd_user: str = ""
    etcd_password: str = ""
    etcd_ca: str = ""
    etcd_cert: str = ""
    etcd_key: str = ""
    etcd_idle_timeout: float = 30.0
    etcd_debounce: float = 0.1
    status_interval: float = 10.0
    status_ttl: int = 30
    max_connections: int = 16384
    max_connections_per_client: int = 1280
    max_longpolls: int = 0  # 0: three quarters of max_connections
    max_longpolls_per_client: int = 1024
    keepalive_timeout: float = 15.0
    self_host: str = ""
    log_level: str = "info"

    @property
    def longpoll_limit(self) -> int:
        """Long-polls at once in all: never every connection, so ordinary requests find one."""
        ceiling = max(self.max_connections * 3 // 4, 1)
        return min(self.max_longpolls, ceiling) if self.max_longpolls else ceiling


def parse_settings(argv: list[str] | None = None) -> MetadataSettings:
    p = FlagParser("METADNS_METADATA", prog="metadata-svc", description=DESCRIPTION)
    p.flag("--listen", default="169.254.169.250:80", help="HOST:PORT to serve HTTP on; port 0 picks a free port")
    p.flag(
        "--data",
        default="/etc/metadns/fleet.yaml",
        help="the fleet file, YAML or JSON (Rancher field names; see examples/fleet.yaml)",
    )
    p.flag(
        "--state-file",
        default="/var/lib/metadns/metadata-last-good.json",
        help="where the last good fleet and its version are kept for restarts; '' disables",
    )
    p.flag("--xff", action="store_true", help="take the client from X-Forwarded-For (only from peers in --xff-trusted)")
    p.flag(
        "--xff-trusted",
        default="127.0.0.0/8,::1/128",
        help="comma list of proxy networks whose X-Forwarded-For is believed",
    )
    p.flag("--max-wait", default=120.0, type=float, help="cap in seconds on a long-poll's maxWait")
    p.flag("--poll-interval", default=1.0, type=float, help="seconds between checks of the fleet file for changes")
    p.flag(
        "--source",
        default="",
        help="where the fleet comes from: etcd://HOST:PORT[,HOST:PORT...]/PREFIX, or file:PATH "
        "(default: the --data file)",
    )
    add_etcd_flags(p)
    p.flag(
        "--etcd-idle-timeout",
        default=30.0,
        type=float,
        help="seconds without any watch message (not even a progress notification) before the watch is "
        "started again on the next endpoint; set etcd's --experimental-watch-progress-notify-interval "
        "well below it",
    )
    p.flag(
        "--etcd-debounce",
        default=0.1,
        type=float,
        help="seconds the watch responses that follow a first one are gathered for, and applied and "
        "published as one version: at 100 changes/s a version carries about ten (each costs every "
        "follower a request), and a lone change waits this long at most",
    )
    p.flag(
        "--status-interval",
        default=10.0,
        type=float,
        help="with an etcd source: seconds between heartbeats of this host's report of what it serves, "
        "<prefix>status/hosts/<host> (what 'metadns fleet status' lists; <host> as --self-host says); a change "
        "of what it serves is written at once, at most once a second; 0: no report",
    )
    p.flag(
        "--status-ttl",
        default=30,
        type=int,
        help="seconds the report stays in etcd once it is no longer renewed (a killed or hung host; on a clean "
        "stop it goes at once); at least twice --status-interval",
    )
    p.flag(
        "--watch",
        default="auto",
        choices=("auto", "poll"),
        help="how file changes are noticed: 'auto' reads a change once its writer closed it (inotify "
        "on Linux, polling elsewhere), 'poll' only polls (a change is read once unchanged over two polls)",
    )
    p.flag(
        "--max-connections",
        default=16384,
        type=int,
        help="HTTP connections open at once (kept below the open-files limit, raised to its maximum at start); "
        "a connection over it gets 503 with Retry-After",
    )
    p.flag(
        "--max-connections-per-client",
        default=1280,
        type=int,
        help="HTTP connections open at once from one socket address (not for --xff-trusted proxies when --xff "
        "is on: their clients are counted apart); over it: 429 with Retry-After",
    )
    p.flag(
        "--max-longpolls",
        default=0,
        type=int,
        help="long-polls waiting at once; 0: three quarters of --max-connections, so that ordinary requests "
        "always find a connection; over it: 429 with Retry-After",
    )
    p.flag(
        "--max-longpolls-per-client",
        default=1024,
        type=int,
        help="long-polls waiting at once from one client, as identified (X-Forwarded-For from a trusted proxy); "
        "over it: 429 with Retry-After",
    )
    p.flag(
        "--keepalive-timeout",
        default=15.0,
        type=float,
        help="seconds an idle keep-alive connection is kept (1 s once three quarters of the slots are taken)",
    )
    p.flag(
        "--self-host",
        default="",
        help="name or uuid of the host this service runs on (the 'self/host' of unknown clients); "
        "default: the only host of the fleet. With etcd, also whose report this host writes "
        "(status/hosts/<host>): that host's uuid once the fleet has it, else the text given; with neither, "
        "this machine's hostname",
    )
    p.flag("--log-level", default="info", choices=("debug", "info", "warning", "error"), help="how much to log")
    ns = p.parse_flags(argv)
    try:
        host, port = parse_host_port(ns.listen, 80)
    except ValueError as exc:
        p.error(f"--listen: {exc}")
    if ns.max_wait <= 0:
        p.error("--max-wait must be positive")
    if ns.source and not ns.source.startswith(("etcd://", "file:")):
        p.error(f"--source {ns.source!r}: give etcd://HOST:PORT[,...]/PREFIX or file:PATH")
    if ns.source.startswith("etcd://"):
        try:
            from metadata_svc.sources.etcd import parse_etcd_source

            parse_etcd_source(ns.source)
        except ValueError as exc:
            p.error(f"--source: {exc}")
    if ns.status_interval < 0:
        p.error("--status-interval must be 0 (no report) or more")
    if ns.status_interval and ns.status_ttl < max(2, 2 * ns.status_interval):
        p.error("--status-ttl must be at least 2 seconds and twice --status-interval")
    if ns.max_connections < 1 or ns.max_connections_per_client < 1 or ns.max_longpolls_per_client < 1:
        p.error("--max-connections, --max-connections-per-client and --max-longpolls-per-client must be at least 1")
    if ns.max_longpolls < 0:
        p.error("--max-longpolls must be 0 (three quarters of --max-connections) or more")
    try:
        xff_trusted = parse_networks(ns.xff_trusted.split(","))
    except ValueError as exc:
        p.error(f"--xff-trusted: {exc}")
    return MetadataSettings(
        host=host,
        port=port,
        data=ns.data,
        state_file=ns.state_file,
        xff=ns.xff,
        xff_trusted=xff_trusted,
        max_wait=ns.max_wait,
        default_wait=min(60.0, ns.max_wait),
        poll_interval=ns.poll_interval,
        watch=ns.watch,
        source=ns.source,
        etcd_tls=ns.etcd_tls,
        etcd_user=ns.etcd_user,
        etcd_password=ns.etcd_password,
        etcd_ca=ns.etcd_ca,
        etcd_cert=ns.etcd_cert,
        etcd_key=ns.etcd_key,
        etcd_idle_timeout=ns.etcd_idle_timeout,
        etcd_debounce=ns.etcd_debounce,
        status_interval=ns.status_interval,
        status_ttl=ns.status_ttl,
        max_connections=ns.max_connections,
        max_connections_per_client=ns.max_connections_per_client,
        max_longpolls=ns.max_longpolls,
        max_longpolls_per_client=ns.max_longpolls_per_client,
        keepalive_timeout=ns.keepalive_timeout,
        self_host=ns.self_host,
        log_level=ns.log_level,
    )
