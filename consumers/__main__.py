"""``metadns``: the consumer commands (``render``, ``redis-repair``)."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import aiohttp

from consumers import redis_repair
from consumers.fleet_command import FLEET_HELP, REGISTER_HELP, fleet_main, register_main
from consumers.render.command import RenderLoop, RenderSettings, parse_mode
from shared.logs import log_event, setup_logging
from shared.settings import FlagParser

RENDER_HELP = """\
Render a JSON template (an MCRouter config, or any JSON) whose server tokens are expanded:
  dns://host  dns+PORT://host  dnssrv://_svc._proto.name  metadata://stack/service[:PORT]
Written atomically, only when it changes; re-rendered on template change, fleet change and DNS TTL.

  metadns render --template pools.json --output /etc/mcrouter/config.json --on-change 'pkill -HUP mcrouter'
  metadns render --pool-setup sharded --servers metadata://infra/cache:11211 --output config.json
"""

REPAIR_HELP = """\
Rewrite the node addresses of a redis-cluster nodes.conf from the fleet before the node starts.
Node IDs map to container names by --mapping FILE, or by the container label --label.

  metadns redis-repair --nodes-conf /data/nodes.conf --mapping /etc/redis/nodes.yaml
"""


def render_main(argv: list[str]) -> int:
    p = FlagParser("METADNS_RENDER", prog="metadns render", description=RENDER_HELP)
    p.flag("--template", default="", help="the JSON template to watch")
    p.flag(
        "--pool-setup",
        default="",
        choices=["", "sharded", "replicated"],
        help="instead of a template: a whole mcrouter config for one memcached service",
    )
    p.flag("--servers", default="", help="with --pool-setup: the token for the service's servers")
    p.flag("--output", default="", help="the rendered file (its directory must exist)")
    p.flag("--mode", default="0644", help="octal file mode of the output")
    p.flag("--on-change", default="", help="shell command run after each new output")
    p.flag("--dns", action="append", metavar="IP[:PORT]", help="resolver for dns tokens (default: resolv.conf)")
    p.flag("--metadata-url", default="http://169.254.169.250/2016-07-29", help="for metadata:// tokens; '' disables")
    p.flag("--ttl-min", default=5.0, type=float, help="shortest wait between DNS re-renders (seconds)")
    p.flag("--ttl-max", default=60.0, type=float, help="longest wait between DNS re-renders (seconds)")
    p.flag("--retry", default=5.0, type=float, help="seconds before retrying a failed render")
    p.flag("--poll-interval", default=1.0, type=float, help="seconds between template change checks")
    p.flag("--once", action="store_true", help="render once and exit (1 when the render failed)")
    p.flag("--log-level", default="info", choices=("debug", "info", "warning", "error"), help="how much to log")
    ns = p.parse_flags(argv)
    if not ns.output:
        p.error("--output is required")
    if bool(ns.template) == bool(ns.pool_setup):
        p.error("give either --template or --pool-setup (with --servers)")
    if ns.pool_setup and not ns.servers:
        p.error("--pool-setup needs --servers TOKEN")
    if not Path(ns.output).parent.is_dir():
        p.error(f"--output: directory {Path(ns.output).parent} does not exist")
    try:
        mode = parse_mode(ns.mode)
    except ValueError as exc:
        p.error(str(exc))
    if not ns.ttl_min <= ns.ttl_max:
        p.error("--ttl-min must not exceed --ttl-max")
    setup_logging(ns.log_level)
    settings = RenderSettings(
        output=ns.output,
        template=ns.template,
        pool_setup=ns.pool_setup,
        servers=ns.servers,
        mode=mode,
        on_change=ns.on_change,
        dns=tuple(ns.dns),
        metadata_url=ns.metadata_url,
        ttl_min=ns.ttl_min,
        ttl_max=ns.ttl_max,
        retry=ns.retry,
        poll_interval=ns.poll_interval,
        once=ns.once,
    )
    try:
        return asyncio.run(RenderLoop(settings).run())
    except KeyboardInterrupt:
        return 0


async def _containers(url: str) -> list[dict[str, object]]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session,
        session.get(f"{url.rstrip('/')}/containers", headers={"Accept": "application/json"}) as resp,
    ):
        resp.raise_for_status()
        data = await resp.json(content_type=None)
    if not isinstance(data, list):
        raise ValueError("metadata /containers is not a list")
    return data


def repair_main(argv: list[str]) -> int:
    p = FlagParser("METADNS_REDIS", prog="metadns redis-repair", description=REPAIR_HELP)
    p.flag("--nodes-conf", default="", help="the node's nodes.conf")
    p.flag("--metadata-url", default="http://169.254.169.250/2016-07-29", help="the metadata service")
    p.flag("--mapping", default="", help="YAML/JSON file: node id -> stable container name")
    p.flag("--label", default=redis_repair.DEFAULT_LABEL, help="container label holding the node id (no --mapping)")
    p.flag("--backup-suffix", default=".bak", help="the original is kept as nodes.conf<suffix>")
    p.flag("--dry-run", action="store_true", help="report, change nothing")
    p.flag("--log-level", default="info", choices=("debug", "info", "warning", "error"), help="how much to log")
    ns = p.parse_flags(argv)
    if not ns.nodes_conf:
        p.error("--nodes-conf is required")
    setup_logging(ns.log_level)
    log = logging.getLogger("redis-repair")
    path = Path(ns.nodes_conf)
    if not path.exists():
        log_event(log, logging.INFO, "nothing_to_repair", file=str(path), reason="no nodes.conf yet (first start)")
        return 0
    try:
        text = path.read_text(encoding="utf-8")
        containers = asyncio.run(_containers(ns.metadata_url))
        by_label, addresses = redis_repair.fleet_names(containers, ns.label)
        names = redis_repair.load_mapping(ns.mapping) if ns.mapping else by_label
        result = redis_repair.repair(text, names, addresses)
    except (OSError, ValueError, aiohttp.ClientError) as exc:
        log_event(log, logging.ERROR, "repair_refused", file=str(path), problem=str(exc), changed="nothing")
        return 2
    redis_repair.report(path, result)
    if not ns.dry_run:
        redis_repair.apply(path, result, ns.backup_suffix)
    log_event(
        log,
        logging.INFO,
        "repaired",
        file=str(path),
        moved=len(result.changed),
        unmapped=len(result.unmapped),
        dry_run=ns.dry_run,
    )
    return 0


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    commands = {"render": render_main, "redis-repair": repair_main, "fleet": fleet_main, "register": register_main}
    if not args or args[0] not in commands:
        usage = (
            "usage: metadns {render,redis-repair,fleet,register} [--help]\n\n"
            + RENDER_HELP
            + "\n"
            + REPAIR_HELP
            + "\n"
            + FLEET_HELP
            + "\n"
            + REGISTER_HELP
        )
        if args and args[0] in ("-h", "--help"):
            print(usage)
            sys.exit(0)
        if args:
            print(f"metadns: unknown command {args[0]!r} (commands: {', '.join(commands)})", file=sys.stderr)
        else:
            print(usage, file=sys.stderr)
        sys.exit(2)
    sys.exit(commands[args[0]](args[1:]))


if __name__ == "__main__":
    main()
