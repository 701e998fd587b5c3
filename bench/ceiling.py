"""The bare-Python ceiling: the least a Python DNS server on uvloop can do per query.

It learns the reply to each question of a query file from another server once, then answers
every datagram (one asyncio callback each) with the learnt reply and the query's ID. No
parsing beyond finding the question's end, no caches to keep, no rules: what is left is the
event loop and the two system calls. bench/dns_compare.py runs it beside metadns, dnsmasq and
unbound for the workloads it can answer (local names, cached recursion), pinned the same way.

    .venv/bin/python bench/ceiling.py --port 5399 --learn-from 5353 --queries local.txt
"""

from __future__ import annotations

import argparse
import asyncio
import socket
from pathlib import Path
from typing import Any

from dnslib import DNSRecord


def question_key(packet: bytes) -> bytes:
    end = 12
    while packet[end]:
        end += packet[end] + 1
    return packet[12 : end + 5].lower()


def learn(queries: Path, port: int) -> dict[bytes, bytes]:
    replies: dict[bytes, bytes] = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2)
        for line in queries.read_text().splitlines():
            name, qtype = line.split()
            query = bytes(DNSRecord.question(name, qtype).pack())
            key = question_key(query)
            if key in replies:
                continue
            sock.sendto(query, ("127.0.0.1", port))
            replies[key] = sock.recv(65535)[2:]
    return replies


class Ceiling(asyncio.DatagramProtocol):
    def __init__(self, replies: dict[bytes, bytes]) -> None:
        self.replies = replies
        self.transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # uvloop's UDP transport, not asyncio's class

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            reply = self.replies.get(question_key(data))
        except IndexError:
            return
        if reply is not None and self.transport is not None:
            self.transport.sendto(data[:2] + reply, addr)


async def serve(port: int, replies: dict[bytes, bytes]) -> None:
    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(lambda: Ceiling(replies), local_addr=("127.0.0.1", port))
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--learn-from", type=int, required=True, help="port of the server whose replies to serve")
    parser.add_argument("--queries", type=Path, action="append", required=True, help="dnsperf query files")
    args = parser.parse_args()
    replies: dict[bytes, bytes] = {}
    for path in args.queries:
        replies.update(learn(path, args.learn_from))
    import uvloop

    uvloop.run(serve(args.port, replies))


if __name__ == "__main__":
    main()
