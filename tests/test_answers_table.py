"""The answers table from a fleet, without sockets: names, health rules, views, and when a
fleet change counts as an answers change (only then are client caches cleared)."""

from __future__ import annotations

import copy

from dns_svc.answers import answers_from_fleet
from dns_svc.replies import NOT_LOCAL, ClientCaches
from dns_svc.resolver import TableRef
from shared.model import Fleet
from tests.support.fleets import dns_fleet


def table(data):
    return answers_from_fleet(Fleet.from_mapping(data), metadata_answer=["169.254.169.250"])


def test_names_and_health_rules() -> None:
    t = table(dns_fleet(many=2))
    assert t.records["web.shop.rancher.internal."].a == ("127.0.0.11", "127.0.0.12")
    assert t.records["sick.infra.rancher.internal."].a == ("127.0.0.52",)
    assert t.records["payments.shop.rancher.internal."].cname == "payments.example.test."
    assert t.records["11.0.0.127.in-addr.arpa."].ptr == "shop-web-1.rancher.internal."
    assert [s.target for s in t.records["_many._tcp.infra.rancher.internal."].srv] == [
        "many-0.rancher.internal.",
        "many-1.rancher.internal.",
    ]
    assert t.exists("infra.rancher.internal.")
    assert t.exists("_tcp.infra.rancher.internal.")
    assert not t.exists("nope.rancher.internal.")


def test_views_are_per_client() -> None:
    t = table(dns_fleet(many=0))
    web1 = t.view("127.0.0.11")
    assert web1.search == ("shop.rancher.internal.", "rancher.internal.")
    assert web1.records["primary.rancher.internal."].a == ("127.0.0.21",)
    assert web1.records["kv.shop.rancher.internal."].a == ("127.0.0.31",)
    cache = t.view("127.0.0.31")
    assert cache.search == ("infra.rancher.internal.",)
    assert cache.recurse == (("127.0.2.53", 53),)
    assert t.view("10.9.9.9") is t.default


def test_only_answer_changes_clear_the_client_caches() -> None:
    data = dns_fleet(many=0)
    caches = ClientCaches(10)
    ref = TableRef(table(data), caches)
    caches.for_view("127.0.0.11").put((b"x", 1, 1, 0), NOT_LOCAL)
    relabelled = copy.deepcopy(data)
    relabelled["containers"][0]["labels"] = {"note": "not in DNS"}
    assert not ref.swap(table(relabelled))
    assert len(caches) == 1
    moved = copy.deepcopy(data)
    moved["containers"][4]["primary_ip"] = "127.0.0.99"
    assert ref.swap(table(moved))
    assert len(caches) == 0
    relinked = copy.deepcopy(moved)
    relinked["containers"][0]["links"] = {}
    assert ref.swap(table(relinked))  # a client's own records changed


def test_an_answers_change_keeps_the_shared_replies_it_does_not_touch() -> None:
    from dnslib import DNSRecord

    from dns_svc.replies import CachedReply
    from dns_svc.wire import layout

    data = dns_fleet(many=0)
    caches = ClientCaches(10)
    ref = TableRef(table(data), caches)
    wire = bytes(DNSRecord.question("x.rancher.internal").reply().pack())

    def cached() -> CachedReply:
        return CachedReply(wire, layout(wire), 0.0, 1e9, False)

    caches.keep_shared((b"db", 1, 1, 0), cached(), frozenset({"shop-db-1.rancher.internal."}))
    caches.keep_shared((b"web", 1, 1, 0), cached(), frozenset({"web.shop.rancher.internal."}))
    srv_names = frozenset({"_db._tcp.shop.rancher.internal.", "shop-db-1.rancher.internal."})
    caches.keep_shared((b"srv", 1, 1, 0), cached(), srv_names)
    caches.for_view("127.0.0.11").put((b"x", 1, 1, 0), NOT_LOCAL)
    moved = copy.deepcopy(data)
    next(c for c in moved["containers"] if c["name"] == "shop-db-1")["primary_ip"] = "127.0.0.29"
    assert ref.swap(table(moved))
    assert caches.shared.get((b"web", 1, 1, 0), 0.0) is not None  # untouched by the move
    assert caches.shared.get((b"db", 1, 1, 0), 0.0) is None  # built from the moved container
    assert caches.shared.get((b"srv", 1, 1, 0), 0.0) is None  # its SRV glue named it too
    assert caches.for_view("127.0.0.11").get((b"x", 1, 1, 0), 0.0) is None  # per-client caches go whole
