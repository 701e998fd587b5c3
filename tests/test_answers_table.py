"""The answers table from a fleet, without sockets: names, health rules, views, and when a
fleet change counts as an answers change (only then are client caches cleared)."""

from __future__ import annotations

import copy
from typing import Any

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


def test_a_change_in_place_drops_exactly_what_it_touched() -> None:
    """``TableRef.update``: a client's own answers and memos stay unless a name they were built
    from (tried in vain included) changed, or the client's view did."""
    from dnslib import DNSRecord

    from dns_svc.replies import CachedReply
    from dns_svc.wire import layout
    from shared.fleet_changes import diff_fleets

    data = dns_fleet(many=0)
    fleet = Fleet.from_mapping(data)
    caches = ClientCaches(10)
    ref = TableRef(table(data), caches)
    web1, web2 = ref.current.view("127.0.0.11"), ref.current.view("127.0.0.12")
    wire = bytes(DNSRecord.question("x.rancher.internal").reply().pack())

    def cached() -> CachedReply:
        return CachedReply(wire, layout(wire), 0.0, 1e9, False)

    # "db" through web-1's search list: db.shop... found after nothing at db.
    caches.keep(web1, (b"db", 1, 1, 0), cached(), frozenset({"db.", "db.shop.rancher.internal."}))
    caches.keep(web1, (b"kv", 1, 1, 0), cached(), frozenset({"kv.shop.rancher.internal."}))  # a link alias
    caches.remember_not_local(web2, (b"new", 1, 1, 0), ["new.", "new.shop.rancher.internal.", "new.rancher.internal."])
    caches.remember_not_local(web2, (b"else", 1, 1, 0), ["else.", "else.shop.rancher.internal."])

    def apply(data: dict[str, Any]) -> None:
        nonlocal fleet
        after = Fleet.from_mapping(data)
        ref.update(after, diff_fleets(fleet, after), ref.current.serial + 1)
        fleet = after

    grown = copy.deepcopy(data)
    grown["containers"].append({"name": "new", "primary_ip": "127.0.0.77"})  # new.rancher.internal. has records now
    apply(grown)
    assert caches.lookup(web1, (b"db", 1, 1, 0), 0.0) is not None
    assert caches.known_not_local(web2, (b"else", 1, 1, 0), 0.0)
    assert not caches.known_not_local(web2, (b"new", 1, 1, 0), 0.0)  # one of its candidates is local now

    moved = copy.deepcopy(grown)
    next(c for c in moved["containers"] if c["name"] == "shop-db-1")["primary_ip"] = "127.0.0.29"
    apply(moved)  # db.shop... changed, and web-1's link shop-db-1 -> primary with it
    assert caches.lookup(web1, (b"db", 1, 1, 0), 0.0) is None
    assert ref.current.view("127.0.0.11") is not web1
    assert caches.lookup(web1, (b"kv", 1, 1, 0), 0.0) is None  # its view changed: all of its own go
    assert caches.known_not_local(web2, (b"else", 1, 1, 0), 0.0)  # another client's, untouched

    caches.keep(web2, (b"db", 1, 1, 0), cached(), frozenset({"db.", "db.shop.rancher.internal."}))
    researched = copy.deepcopy(moved)
    next(c for c in researched["containers"] if c["primary_ip"] == "127.0.0.12")["dns_search"] = ["example.test"]
    apply(researched)  # web-2's search list: its view, and every answer of its own, go
    assert caches.lookup(web2, (b"db", 1, 1, 0), 0.0) is None
    assert not caches.known_not_local(web2, (b"else", 1, 1, 0), 0.0)
