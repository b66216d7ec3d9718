"""Meta's own view of SIP health (``GET /<node>?fields=health_status``) beside the gateway's.

With ``meta_api.poll_health`` the daemon runs a :class:`MetaHealthPoller`: every
``meta_api.health_interval`` seconds it asks Meta about each number that has a
``phone_number_id`` (and about ``meta_api.app_id`` when set). The results are
merged into the ``/health`` JSON by :meth:`MetaHealthPoller.annotate`, kept
apart from the gateway's own verdict:

* each PHONE_NUMBER entity gets ``"meta": {"id": <phone_number_id>,
  "can_receive_call_sip": <Meta's worst over the entities it lists for the
  number>, "entities": [Meta's entities as Meta sent them], "checked_at",
  "error", "stale"}`` and, when Meta and the gateway disagree (one BLOCKED,
  the other not), ``"disagreement": {"gateway", "meta", "likely_cause"}``;
* the GATEWAY entity gets ``"meta"`` for the app node (``meta_api.app_id``).

Meta's verdict never changes the gateway's own status or the HTTP status of
``/health``. :class:`MetaHealthCollector` exposes ``wagw_meta_health_status``
(``entity`` = ``phone_number`` with ``id`` the +E.164 number, or ``app`` with the
app id; 0 AVAILABLE, 1 LIMITED, 2 BLOCKED) and ``wagw_meta_health_polls_total``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from gateway.config import Config
from gateway.logging import get_logger
from gateway.metaapi.graph import GraphClient, GraphError

__all__ = [
    "RANK", "MetaEntity", "MetaHealthCollector", "MetaHealthPoller", "NodeHealth",
    "disagreement", "fetch_health_status", "meta_lines", "parse_health_status",
]  # fmt: skip

log = get_logger(__name__)

RANK = {"AVAILABLE": 0, "LIMITED": 1, "BLOCKED": 2}
STALE_AFTER = 3  # intervals without a successful poll: the data is stale
SIP_NOT_ENABLED = 138024
NO_SIP_SERVER = 138025
OUR_PASSWORD_MISSING = 1201  # gateway.ops.health.Code.SIP_PASSWORD_MISSING


@dataclass(frozen=True)
class MetaEntity:
    entity_type: str
    id: str
    status: str | None  # can_receive_call_sip; None when Meta does not say
    errors: tuple[dict[str, Any], ...] = ()
    additional_info: tuple[str, ...] = ()

    @classmethod
    def parse(cls, item: Mapping[str, Any]) -> MetaEntity:
        status = item.get("can_receive_call_sip")
        errors = item.get("errors")
        info = item.get("additional_info")
        return cls(
            entity_type=str(item.get("entity_type") or "UNKNOWN"),
            id=str(item.get("id") or ""),
            status=status if isinstance(status, str) and status else None,
            errors=tuple(
                {
                    "error_code": e.get("error_code"),
                    "error_description": e.get("error_description"),
                    "possible_solution": e.get("possible_solution"),
                }
                for e in (errors if isinstance(errors, list) else [])
                if isinstance(e, Mapping)
            ),
            additional_info=tuple(str(i) for i in (info if isinstance(info, list) else [])),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"entity_type": self.entity_type, "id": self.id}
        if self.status is not None:
            out["can_receive_call_sip"] = self.status
        if self.additional_info:
            out["additional_info"] = list(self.additional_info)
        if self.errors:
            out["errors"] = [dict(e) for e in self.errors]
        return out


def parse_health_status(body: Mapping[str, Any]) -> tuple[MetaEntity, ...]:
    health = body.get("health_status")
    entities = health.get("entities") if isinstance(health, Mapping) else None
    return tuple(
        MetaEntity.parse(e) for e in (entities if isinstance(entities, list) else [])
        if isinstance(e, Mapping)
    )  # fmt: skip


async def fetch_health_status(graph: GraphClient, node_id: str) -> tuple[MetaEntity, ...]:
    body = await graph.get(f"/{node_id}", params={"fields": "health_status"})
    return parse_health_status(body)


def _worst(statuses: Sequence[str | None]) -> str | None:
    known = [s for s in statuses if s in RANK]
    return max(known, key=RANK.__getitem__) if known else None


@dataclass
class NodeHealth:
    """What Meta last said about one node (a phone number or the app)."""

    kind: str  # "PHONE_NUMBER" | "APP"
    node_id: str
    number: str | None = None  # +E.164 for a phone number node
    entities: tuple[MetaEntity, ...] = ()
    checked_at: float | None = None  # unix time of the last successful poll
    error: str | None = None  # the last poll's failure, if it failed

    @property
    def status(self) -> str | None:
        """Meta's verdict for the node: the worst ``can_receive_call_sip`` it lists."""
        return _worst([e.status for e in self.entities])

    def stale(self, now: float, interval: float) -> bool:
        return self.checked_at is None or now - self.checked_at > STALE_AFTER * interval

    def to_json(self, now: float, interval: float) -> dict[str, Any]:
        checked = (
            dt.datetime.fromtimestamp(self.checked_at, dt.UTC).isoformat(timespec="seconds")
            if self.checked_at is not None
            else None
        )
        return {
            "id": self.node_id,
            "can_receive_call_sip": self.status or "UNKNOWN",
            "entities": [e.to_json() for e in self.entities],
            "checked_at": checked,
            "error": self.error,
            "stale": self.stale(now, interval),
        }


def _our_errors(entity: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    errors = entity.get("errors")
    return [e for e in errors if isinstance(e, Mapping)] if isinstance(errors, list) else []


def disagreement(ours: str, node: NodeHealth, entity: Mapping[str, Any]) -> dict[str, str] | None:
    """When one side says BLOCKED and the other does not: both verdicts and the likely cause."""
    meta = node.status
    if meta is None or (ours == "BLOCKED") == (meta == "BLOCKED"):
        return None
    if meta == "BLOCKED":
        errors = [e for ent in node.entities for e in ent.errors]
        codes = {e.get("error_code") for e in errors}
        if SIP_NOT_ENABLED in codes:
            cause = (
                f"SIP is not enabled for this number at Meta ({SIP_NOT_ENABLED}): the gateway is"
                " ready but Meta does not send it calls. Run `wa-sip-gateway meta show -c FILE`,"
                " then `wa-sip-gateway meta apply -c FILE`."
            )
        elif NO_SIP_SERVER in codes:
            cause = (
                f"Meta has no SIP server for this number and app ({NO_SIP_SERVER}): run"
                " `wa-sip-gateway meta apply -c FILE` with a token of the app the number uses."
            )
        elif errors:
            e = errors[0]
            cause = (
                f"Meta reports {e.get('error_code')}: {e.get('error_description')}"
                f" (Meta's suggestion: {e.get('possible_solution')})."
            )
        else:
            cause = (
                "Meta says BLOCKED without a reason: compare the settings with"
                " `wa-sip-gateway meta show -c FILE`; check that whatsapp.hostname resolves"
                " publicly to this gateway and its certificate chains to a public CA (Meta"
                " checks from outside, the gateway only from inside)."
            )
    else:
        ours_errors = _our_errors(entity)
        if any(e.get("error_code") == OUR_PASSWORD_MISSING for e in ours_errors):
            cause = (
                "Meta would send calls, but the gateway has no SIP password for the number"
                " and refuses them (403): run `wa-sip-gateway meta fetch-password -c FILE`."
            )
        elif ours_errors:
            first = ours_errors[0]
            cause = (
                "Meta would send calls, but the gateway cannot take them:"
                f" {first.get('error_description')} Fix: {first.get('possible_solution')}"
            )
        else:
            cause = "Meta would send calls, but the gateway reports itself BLOCKED."
    return {"gateway": ours, "meta": meta, "likely_cause": cause}


ClientFactory = Callable[[Config, aiohttp.ClientSession | None], GraphClient]


def _default_client(cfg: Config, session: aiohttp.ClientSession | None) -> GraphClient:
    assert cfg.meta_api is not None
    return GraphClient.from_config(cfg.meta_api, session=session)


@dataclass
class _Counters:
    ok: int = 0
    error: int = 0


class MetaHealthPoller:
    """Polls Meta's health_status while the daemon runs (when ``meta_api.poll_health``).

    Daemon hook: ``poller = MetaHealthPoller(cfg)``; ``poller.start()`` once the loop
    runs; ``poller.configure(new_cfg)`` after a reload; ``await poller.stop()``;
    ``poller.annotate(report_json)`` on each ``/health``; ``registry.register(
    MetaHealthCollector(poller))`` for the metrics.
    """

    def __init__(
        self,
        cfg: Config,
        *,
        clock: Callable[[], float] = time.time,
        client_factory: ClientFactory = _default_client,
    ) -> None:
        self._clock = clock
        self._client_factory = client_factory
        self.nodes: dict[tuple[str, str], NodeHealth] = {}
        self.counters = _Counters()
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._wake = asyncio.Event()
        self._disagreeing: set[str] = set()
        self._started = False
        self.cfg = cfg
        self.configure(cfg)

    # -- configuration ------------------------------------------------------------
    @property
    def enabled(self) -> bool:
        meta = self.cfg.meta_api
        return meta is not None and meta.poll_health and bool(self.nodes)

    @property
    def interval(self) -> float:
        meta = self.cfg.meta_api
        return meta.health_interval if meta is not None else 300.0

    def configure(self, cfg: Config) -> None:
        """Take a (reloaded) config: the nodes to poll, on or off."""
        self.cfg = cfg
        wanted: dict[tuple[str, str], NodeHealth] = {}
        for n in cfg.whatsapp.numbers:
            if n.phone_number_id is not None:
                key = ("PHONE_NUMBER", n.phone_number_id)
                old = self.nodes.get(key)
                node = old or NodeHealth("PHONE_NUMBER", n.phone_number_id)
                node.number = n.number
                wanted[key] = node
        meta = cfg.meta_api
        if meta is not None and meta.app_id is not None:
            key = ("APP", meta.app_id)
            wanted[key] = self.nodes.get(key) or NodeHealth("APP", meta.app_id)
        self.nodes = wanted
        if not self._started:
            return
        if self._task is not None and not self._task.done():
            self._wake.set()  # poll now with the new settings (or end when disabled)
        else:
            self.start()

    # -- running ------------------------------------------------------------------
    def start(self) -> None:
        """Start polling (in the running loop) if ``meta_api.poll_health`` is on."""
        self._started = True
        if not self.enabled or (self._task is not None and not self._task.done()):
            return
        self._wake = asyncio.Event()
        self._task = asyncio.ensure_future(self._run())
        log.info(
            "meta_health_polling", nodes=[f"{k}:{i}" for k, i in self.nodes], interval=self.interval
        )

    async def stop(self) -> None:
        self._started = False
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _run(self) -> None:
        while self.enabled:
            await self.poll_once()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)

    async def poll_once(self) -> None:
        """Ask Meta about every node once; a failure keeps the node's last answer."""
        if self.cfg.meta_api is None or not self.nodes:
            return
        if self._session is None:
            self._session = aiohttp.ClientSession()
        try:
            graph = self._client_factory(self.cfg, self._session)
        except GraphError as exc:
            for node in self.nodes.values():
                self._failed(node, str(exc))
            return
        async with graph:
            for node in list(self.nodes.values()):
                try:
                    entities = await fetch_health_status(graph, node.node_id)
                except GraphError as exc:
                    self._failed(node, exc.describe())
                    continue
                previous = node.status
                node.entities = entities
                node.checked_at = self._clock()
                node.error = None
                self.counters.ok += 1
                if node.status != previous:
                    log.info(
                        "meta_health_status",
                        entity=node.kind.lower(),
                        id=node.number or node.node_id,
                        status=node.status,
                        previous=previous,
                        errors=[e.get("error_code") for ent in entities for e in ent.errors],
                    )

    def _failed(self, node: NodeHealth, why: str) -> None:
        self.counters.error += 1
        if node.error != why:
            log.warning("meta_health_poll_failed", id=node.number or node.node_id, error=why)
        node.error = why

    # -- the /health merge ----------------------------------------------------------
    def annotate(self, report: dict[str, Any]) -> dict[str, Any]:
        """Add Meta's view to the ``/health`` JSON (in place; also returned)."""
        if self.cfg.meta_api is None or not self.cfg.meta_api.poll_health:
            return report
        now, interval = self._clock(), self.interval
        by_number = {n.number: n for n in self.nodes.values() if n.number}
        app = next((n for n in self.nodes.values() if n.kind == "APP"), None)
        body = report.get("health_status")
        entities = body.get("entities") if isinstance(body, dict) else None
        disagreeing: set[str] = set()
        for entity in entities if isinstance(entities, list) else []:
            if not isinstance(entity, dict):
                continue
            kind, ident = entity.get("entity_type"), str(entity.get("id"))
            node = by_number.get(ident) if kind == "PHONE_NUMBER" else None
            if kind == "GATEWAY":
                node = app
            if node is None:
                continue
            meta = node.to_json(now, interval)
            ours = str(entity.get("can_receive_call_sip", ""))
            if kind == "PHONE_NUMBER" and not meta["stale"]:
                found = disagreement(ours, node, entity)
                if found is not None:
                    meta["disagreement"] = found
                    disagreeing.add(ident)
                    if ident not in self._disagreeing:
                        log.warning("meta_health_disagreement", number=ident, **found)
            entity["meta"] = meta
        for ident in self._disagreeing - disagreeing:
            log.info("meta_health_agreement", number=ident)
        self._disagreeing = disagreeing
        return report


class MetaHealthCollector(Collector):
    """``wagw_meta_health_status{entity,id}`` and ``wagw_meta_health_polls_total{result}``."""

    def __init__(self, poller: MetaHealthPoller) -> None:
        self._poller = poller

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        poller = self._poller
        meta = poller.cfg.meta_api
        if meta is None or not meta.poll_health:
            return
        gauge = GaugeMetricFamily(
            "wagw_meta_health_status",
            "Meta's can_receive_call_sip (health_status API): 0 AVAILABLE, 1 LIMITED, 2 BLOCKED;"
            " phone_number: Meta's worst entity for the number, app: Meta's APP entities",
            labels=["entity", "id"],
        )
        apps: dict[str, str] = {}
        for node in poller.nodes.values():
            status = node.status
            if node.kind == "PHONE_NUMBER" and node.number and status is not None:
                gauge.add_metric(["phone_number", node.number], RANK[status])
            for e in node.entities:
                if e.entity_type == "APP" and e.status in RANK and e.id:
                    apps[e.id] = _worst([apps.get(e.id), e.status]) or e.status
        for app_id, status in sorted(apps.items()):
            gauge.add_metric(["app", app_id], RANK[status])
        yield gauge
        polls = CounterMetricFamily(
            "wagw_meta_health_polls", "health_status requests to Meta by result", labels=["result"]
        )
        polls.add_metric(["ok"], poller.counters.ok)
        polls.add_metric(["error"], poller.counters.error)
        yield polls


# --------------------------------------------------------------------------- for a person


def meta_lines(
    entity: Mapping[str, Any],
    word: Callable[[str], str] = lambda s: s,
    dim: Callable[[str], str] = lambda s: s,
) -> list[str]:
    """The ``meta`` object of one /health entity as indented lines (none when absent)."""
    meta = entity.get("meta")
    if not isinstance(meta, Mapping):
        return []
    status = str(meta.get("can_receive_call_sip", "UNKNOWN"))
    when = meta.get("checked_at") or "never"
    extra = " (stale)" if meta.get("stale") else ""
    about = f"id {meta.get('id')}, checked {when}{extra}"
    lines = [f"    Meta says: {word(status)}  {dim(about)}"]
    if meta.get("error"):
        lines.append(f"      last poll failed: {meta['error']}")
    for sub in meta.get("entities") or []:
        if not isinstance(sub, Mapping):
            continue
        kind, ident = sub.get("entity_type"), sub.get("id")
        sub_status = sub.get("can_receive_call_sip")
        if sub_status is not None:
            lines.append(f"      {kind} {ident}: {word(str(sub_status))}")
        for error in sub.get("errors") or []:
            lines.append(f"        [{error.get('error_code')}] {error.get('error_description')}")
            lines.append(dim(f"               Meta's fix: {error.get('possible_solution')}"))
        for info in sub.get("additional_info") or []:
            lines.append(f"        {info}")
    found = meta.get("disagreement")
    if isinstance(found, Mapping):
        lines.append(
            f"    DISAGREEMENT: the gateway says {word(str(found.get('gateway')))}, Meta says"
            f" {word(str(found.get('meta')))}"
        )
        lines.append(f"      likely cause: {found.get('likely_cause')}")
    return lines
