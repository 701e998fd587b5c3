"""Typed application state keys (``web.AppKey``), one per object the handlers use."""

from __future__ import annotations

from aiohttp import web

from metadata_svc.connections import ConnectionGate
from metadata_svc.counters import MetadataCounters
from metadata_svc.host_status import HostStatusReporter
from metadata_svc.identity import ClientIdentity
from metadata_svc.longpolls import LongPollSlots
from metadata_svc.settings import MetadataSettings
from metadata_svc.store import VersionedStore

SETTINGS = web.AppKey("settings", MetadataSettings)
STORE = web.AppKey("store", VersionedStore)
IDENTITY = web.AppKey("identity", ClientIdentity)
GATE = web.AppKey("gate", ConnectionGate)
LONGPOLLS = web.AppKey("longpolls", LongPollSlots)
SOURCE = web.AppKey("source", object)  # the FleetSource: /status shows what it knows about itself
COUNTERS = web.AppKey("counters", MetadataCounters)
HOST_STATUS = web.AppKey("host_status", HostStatusReporter)  # with an etcd source: this host's report in etcd
