"""Invariants of the DNS core that a mutation check found unguarded: each test here fails when
its invariant is broken in the code (the docstring says which line), not only when a feature
stops working altogether."""

from __future__ import annotations

import asyncio
import copy

import pytest

from tests.support.dns import addresses, ask, rcode, run_dns, serve_fleet
from tests.support.fleets import dns_fleet
from tests.support.upstream import ScriptedUpstream

pytestmark = pytest.mark.external_tool


async def test_an_answer_built_before_a_fleet_change_is_not_cached_after_it() -> None:
    """The client cache stores an answer only if the answers did not change while it was being
    built (``ClientCacheStep.back``: ``query.generation != caches.generation``). Here the
    answer waits on an upstream (a CNAME chased), the fleet changes meanwhile: the next query
    must see the new fleet, not the answer built from the old one."""
    before = dns_fleet()
    after = copy.deepcopy(before)
    payments = next(s for s in after["services"] if s["name"] == "payments")
    payments.pop("hostname")
    payments["external_ips"] = ["192.0.2.99"]
    async with ScriptedUpstream(delay=0.4) as upstream, run_dns(recurse=(upstream.address,)) as server:
        await serve_fleet(server, before, 1)
        asking = asyncio.ensure_future(ask(server, "payments.shop.rancher.internal"))
        while not upstream.queries:  # the chase is waiting on the upstream
            await asyncio.sleep(0.01)
        await serve_fleet(server, after, 2)
        old = await asking
        assert "192.0.2.55" in addresses(old)  # answered from the table it started with
        assert addresses(await ask(server, "payments.shop.rancher.internal")) == ["192.0.2.99"]


async def test_a_cached_upstream_answer_is_used_by_the_relay_path_too() -> None:
    """A query the client cache knows nothing about (new answers generation) but the global cache
    can answer must be answered from it, not relayed upstream again
    (``GlobalCacheStep.check`` answers on a hit)."""
    data = dns_fleet()
    async with ScriptedUpstream() as upstream, run_dns(recurse=(upstream.address,)) as server:
        await serve_fleet(server, data, 1)
        assert addresses(await ask(server, "www.example.test")) == ["192.0.2.55"]
        changed = copy.deepcopy(data)
        changed["containers"][0]["primary_ip"] = "127.0.0.99"
        await serve_fleet(server, changed, 2)  # the client caches start again; the global cache stays
        assert addresses(await ask(server, "www.example.test")) == ["192.0.2.55"]
        assert len(upstream.queries) == 1


async def test_queries_beyond_the_chain_limit_get_servfail_at_once() -> None:
    """When ``max_inflight`` chain coroutines are running, a further query gets SERVFAIL at once
    (counted as ``overload``) instead of another task: the bound on memory under a flood."""
    async with ScriptedUpstream(delay=1.0) as upstream, run_dns(recurse=(upstream.address,)) as server:
        await serve_fleet(server, dns_fleet(), 1)
        server.dispatcher.max_inflight = 2
        # a CNAME chased upstream is built by the chain's coroutines: each holds a task
        names = ["payments.shop.rancher.internal"] * 2
        waiting = [asyncio.ensure_future(ask(server, n, source=f"127.0.0.{20 + i}")) for i, n in enumerate(names)]
        # until both hold a task and their (one, shared) upstream query has arrived: on a loaded
        # machine it may still be on its way when the tasks exist, and would then count as sent
        # by the query below
        async with asyncio.timeout(30):
            while len(server.dispatcher.tasks) < 2 or not upstream.queries:
                await asyncio.sleep(0.01)
        sent = len(upstream.queries)
        refused = await ask(server, "payments.shop.rancher.internal", source="127.0.0.30")
        assert rcode(refused) == "SERVFAIL"
        # at once, not after the upstream: the two queries ahead of it are still waiting for it,
        # and this one sent nothing upstream
        assert not any(w.done() for w in waiting)
        assert len(upstream.queries) == sent
        assert server.resolver.tally.total("overload") == 1
        for reply in await asyncio.gather(*waiting):
            assert rcode(reply) == "NOERROR"


async def test_a_name_that_became_local_while_its_upstream_query_waited_is_answered_locally() -> None:
    """The local step remembers "not local" only for the answers generation it looked in
    (``LocalAnswers.back``: ``query.generation == memo.generation``). Here the fleet gains the
    name while its upstream query waits: the next query must get the new local answer, not the
    upstream one through a "not local" remembered into the new generation."""
    before = dns_fleet()
    after = copy.deepcopy(before)
    after["services"].append({"name": "newsvc", "stack_name": "shop"})
    after["containers"].append(
        {
            "name": "newsvc-1",
            "stack_name": "shop",
            "service_name": "newsvc",
            "primary_ip": "127.0.0.77",
            "host_uuid": "host-a",
        }
    )
    async with ScriptedUpstream(delay=0.4) as upstream, run_dns(recurse=(upstream.address,)) as server:
        await serve_fleet(server, before, 1)
        asking = asyncio.ensure_future(ask(server, "newsvc", source="127.0.0.11"))
        while not upstream.queries:
            await asyncio.sleep(0.01)
        await serve_fleet(server, after, 2)
        assert addresses(await asking) == ["192.0.2.55"]  # asked before the change: upstream's
        assert addresses(await ask(server, "newsvc", source="127.0.0.11")) == ["127.0.0.77"]
