"""SIP dialogs: RFC 3261 section 12 (with 13.2.2.4, 14 and 15).

A :class:`Dialog` holds the state both ends of a call leg keep: Call-ID, tags,
URIs, CSeq counters, the remote target and the route set. It builds in-dialog
requests (Route, Request-URI, CSeq) and checks incoming ones; it never sends
anything itself, and adds no Via (the transaction layer does, see
:func:`gateway.sip.transaction.add_via`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from gateway.sip.message import Request, Response
from gateway.sip.uri import Address, SipUri, UriError, parse_address, parse_uri

# Requests that replace the remote target (12.2, RFC 3311 UPDATE, RFC 6665 SUBSCRIBE/NOTIFY).
TARGET_REFRESH_METHODS = frozenset({"INVITE", "UPDATE", "SUBSCRIBE", "NOTIFY"})
# Requests that carry our Contact (8.1.1.8 and the target refresh requests above; RFC 3515 REFER).
CONTACT_METHODS = TARGET_REFRESH_METHODS | {"REFER"}
MAX_FORWARDS = "70"


def _without_tag(addr: Address) -> Address:
    return replace(addr, params=tuple(p for p in addr.params if p[0].lower() != "tag"))


def _name_addr(value: str) -> str:
    """A Route / Record-Route / Contact value as ``<uri>;params`` (kept verbatim if it is)."""
    value = value.strip()
    return value if "<" in value else str(parse_address(value))


def _contact_uri(msg: Request | Response) -> str | None:
    contact = msg.contact
    return str(contact.uri) if contact is not None else None


def _secure(request: Request) -> bool:
    # 12.1.1 / 12.1.2: a sips Request-URI (sent over TLS) makes the dialog secure.
    return request.uri[:5].lower() == "sips:"


@dataclass(slots=True)
class Dialog:
    call_id: str
    local_tag: str
    remote_tag: str
    local_uri: Address  # From of our requests, without tag
    remote_uri: Address  # To of our requests, without tag
    local_seq: int
    remote_seq: int | None
    remote_target: str  # URI string
    route_set: list[str] = field(default_factory=list)  # '<uri;lr>' values, in use order
    secure: bool = False
    local_contact: str = ""  # our Contact: a URI (wrapped in <> when sent) or a name-addr
    early: bool = False  # UAC dialog created by a 1xx (12.1.2); a 2xx confirms it

    @property
    def id(self) -> tuple[str, str, str]:
        return (self.call_id, self.local_tag, self.remote_tag)

    # -- creation (12.1) ------------------------------------------------------
    @classmethod
    def uac(cls, request: Request, response: Response) -> Dialog:
        """The dialog a UAC gets from a 1xx-with-tag or 2xx to ``request`` (12.1.2)."""
        local_tag = request.from_.tag
        if not local_tag:
            raise ValueError("request has no From tag")
        rr = [_name_addr(v) for v in response.headers.get_all("Record-Route")]
        return cls(
            call_id=request.call_id,
            local_tag=local_tag,
            remote_tag=response.to.tag or "",  # no tag: an RFC 2543 peer (12.1.2)
            local_uri=_without_tag(request.from_),
            remote_uri=_without_tag(request.to),
            local_seq=request.cseq.seq,
            remote_seq=None,  # 12.1.2: empty until the peer sends a request
            # A 2xx to INVITE must have a Contact; without one, stay on the Request-URI.
            remote_target=_contact_uri(response) or request.uri,
            route_set=rr[::-1],  # 12.1.2: Record-Route in reverse order
            secure=_secure(request),
            local_contact=_contact_uri(request) or "",
            early=response.status < 200,
        )

    @classmethod
    def uas(cls, request: Request, local_tag: str, local_contact: str) -> Dialog:
        """The dialog a UAS gets when it answers ``request`` with To tag ``local_tag`` (12.1.1)."""
        return cls(
            call_id=request.call_id,
            local_tag=local_tag,
            remote_tag=request.from_.tag or "",
            local_uri=_without_tag(request.to),
            remote_uri=_without_tag(request.from_),
            local_seq=0,  # 12.1.1: empty; the first request we send gets CSeq 1
            remote_seq=request.cseq.seq,
            remote_target=_contact_uri(request) or str(request.from_.uri),
            route_set=[_name_addr(v) for v in request.headers.get_all("Record-Route")],
            secure=_secure(request),
            local_contact=local_contact,
        )

    # -- sending (12.2.1) -----------------------------------------------------
    def _loose(self) -> bool:
        return bool(self.route_set) and self._route_uri(0).has_param("lr")

    def _route_uri(self, index: int) -> SipUri:
        uri = parse_address(self.route_set[index]).uri
        if not isinstance(uri, SipUri):
            raise ValueError(f"route {self.route_set[index]!r} is not a SIP URI")
        return uri

    def _routing(self) -> tuple[str, list[str]]:
        """Request-URI and Route values per 12.2.1.1."""
        if not self.route_set:
            return self.remote_target, []
        if self._loose():
            return self.remote_target, list(self.route_set)
        # Strict routing (RFC 2543 proxies): the first route becomes the Request-URI,
        # stripped of what a Request-URI cannot carry (19.1.1 table 1: method, headers),
        # and the remote target goes last in the Route set.
        first = replace(self._route_uri(0).without_params("method"), headers=None)
        return str(first), [*self.route_set[1:], f"<{self.remote_target}>"]

    def _build(
        self,
        method: str,
        cseq: int,
        body: bytes,
        content_type: str | None,
        headers: Iterable[tuple[str, str]],
    ) -> Request:
        uri, routes = self._routing()
        req = Request(method=method, uri=uri, body=body)
        h = req.headers
        for route in routes:
            h.add("Route", route)  # one line each, in order
        h.add("Max-Forwards", MAX_FORWARDS)
        h.add("From", str(self.local_uri.with_param("tag", self.local_tag)))
        to = (
            self.remote_uri.with_param("tag", self.remote_tag)
            if self.remote_tag
            else self.remote_uri
        )
        h.add("To", str(to))
        h.add("Call-ID", self.call_id)
        h.add("CSeq", f"{cseq} {method}")
        if method in CONTACT_METHODS and self.local_contact:
            contact = self.local_contact
            h.add("Contact", contact if "<" in contact else f"<{contact}>")
        for name, value in headers:
            h.add(name, value)
        if content_type is not None:
            h.set("Content-Type", content_type)
        elif body and "Content-Type" not in h:
            raise ValueError("a body needs a content type")
        return req

    def create_request(
        self,
        method: str,
        *,
        body: bytes = b"",
        content_type: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
    ) -> Request:
        """A new in-dialog request (12.2.1.1), without Via. Not for ACK or CANCEL."""
        if method.upper() == "ACK":
            raise ValueError("use create_ack for an ACK")
        if method.upper() == "CANCEL":
            raise ValueError("CANCEL is built from the INVITE (TransactionManager.cancel)")
        self.local_seq += 1  # 12.2.1.1: one higher for each new request
        return self._build(method, self.local_seq, body, content_type, headers)

    def create_ack(
        self, invite_cseq: int, *, body: bytes = b"", content_type: str | None = None
    ) -> Request:
        """ACK for a 2xx to the INVITE with CSeq ``invite_cseq`` (13.2.2.4); no Via yet."""
        return self._build("ACK", invite_cseq, body, content_type, ())

    def next_hop(self) -> SipUri:
        """The URI to resolve (RFC 3263) for an in-dialog request: first route, else target."""
        if self.route_set:
            return self._route_uri(0)  # loose: the first Route; strict: it is the R-URI
        try:
            uri = parse_uri(self.remote_target)
        except UriError as exc:
            raise ValueError(f"bad remote target {self.remote_target!r}") from exc
        if not isinstance(uri, SipUri):
            raise ValueError(f"remote target {self.remote_target!r} is not a SIP URI")
        return uri

    # -- receiving (12.2.2) ---------------------------------------------------
    def receive_request(self, request: Request) -> bool:
        """Check and account an in-dialog request; False means answer 500 (12.2.2)."""
        seq = request.cseq.seq
        if request.method in ("ACK", "CANCEL"):
            return True  # they reuse the INVITE's number: no new request of the peer
        if self.remote_seq is not None and seq < self.remote_seq:
            return False  # out of order
        self.remote_seq = seq
        if request.method in TARGET_REFRESH_METHODS:
            target = _contact_uri(request)
            if target:
                self.remote_target = target  # 12.2.2
        return True

    def update_from_response(self, response: Response) -> None:
        """Target refresh from a 2xx to a target refresh request we sent (12.2.1.2).

        A 2xx that confirms an early dialog also replaces its route set (13.2.2.4).
        """
        if not 200 <= response.status < 300:
            return
        if response.cseq.method not in TARGET_REFRESH_METHODS:
            return
        if self.early and response.cseq.method == "INVITE":
            rr = [_name_addr(v) for v in response.headers.get_all("Record-Route")]
            self.route_set = rr[::-1]
            self.early = False
        target = _contact_uri(response)
        if target:
            self.remote_target = target
