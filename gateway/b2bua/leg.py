"""The two halves of a call: a UAS leg toward the caller, a UAC leg toward the callee.

A leg owns what RFC 3261 gives one side of a B2BUA: the dialog (section 12),
the INVITE transaction (section 17: the server one for the caller, the client
one for the callee), our tag and Contact, the invite session
(:mod:`gateway.b2bua.session`: offer/answer, re-INVITE and UPDATE answered
locally) and how a BYE, an ACK or a CANCEL is sent. Which side it faces
(Meta or the PBX) is its :class:`~gateway.b2bua.peer.Peer`. A leg decides
nothing about the other leg: the :class:`~gateway.b2bua.call.Call` does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from gateway.b2bua.peer import Peer
from gateway.b2bua.port import SipPort, dialog_target, hang_up_answer, routable
from gateway.b2bua.session import SDP, Reoffer, Session
from gateway.logging import get_logger
from gateway.sdp.negotiate import MediaParams, NegotiationError, describe
from gateway.sdp.session import SdpError, SessionDescription
from gateway.sip.auth import (
    AuthParseError,
    UnsupportedChallenge,
    answer_challenge,
    parse_challenge,
    select_challenge,
)
from gateway.sip.dialog import Dialog
from gateway.sip.ids import new_tag
from gateway.sip.message import Request, Response
from gateway.sip.transaction import ClientTransaction, ServerTransaction, Target

log = get_logger(__name__)

FORK_REASON = 'SIP;cause=200;text="answered elsewhere"'  # BYE to a fork that answered too
RETRY = ("Retry-After", "1")

Answer = Literal["ours", "fork", "unroutable"]


class Leg:
    """What both legs do: in-dialog requests, BYE, ACK, the session."""

    def __init__(self, key: str, peer: Peer, sip: SipPort, session: Session, contact: str) -> None:
        self.key = key  # the call's key, for logs
        self.peer = peer
        self.sip = sip
        self.session = session
        self.contact = contact  # our Contact URI on this leg
        self.dialog: Dialog | None = None
        self.tag = new_tag()  # our tag in this leg's dialog

    @property
    def media(self) -> MediaParams | None:
        return self.session.media

    @property
    def call_id(self) -> str:
        raise NotImplementedError

    def contact_headers(self) -> list[tuple[str, str]]:
        return [("Contact", f"<{self.contact}>")]

    # -- in-dialog requests (RFC 3261 section 12.2.2) -----------------------------
    def accepts(self, req: Request, tx: ServerTransaction) -> bool:
        """Whether ``req`` is in order in the dialog (CSeq, RFC 3261 12.2.2); if not it
        gets 500 with Retry-After."""
        if self.dialog is not None and not self.dialog.receive_request(req):
            self.sip.reply(tx, 500, headers=[RETRY])
            return False
        return True

    def answer_in_dialog(
        self, req: Request, tx: ServerTransaction, *, setup: bool
    ) -> MediaParams | None:
        """Answer an in-dialog request other than BYE here; the media that changed, if any.
        ``setup``: the first INVITE has no final response yet."""
        method = req.method
        if method == "INVITE" and setup:
            # An INVITE before the first one has its final response (RFC 3261 14.2).
            self.sip.reply(tx, 500, headers=[RETRY])
        elif method == "INVITE" or (method == "UPDATE" and "UPDATE" in self.peer.allow):
            return self._answer_reoffer(req, tx, self.session.reoffer(req))
        elif method in ("OPTIONS", "INFO", "NOTIFY"):
            self.sip.reply(tx, 200)
        else:
            self.sip.reply(tx, 405, headers=[("Allow", self.peer.allow)])
        return None

    def _answer_reoffer(
        self, req: Request, tx: ServerTransaction, result: Reoffer
    ) -> MediaParams | None:
        if result.error:
            log.warning(f"{self.peer.prefix}_reoffer_rejected", call=self.key, error=result.error)
        headers = self.dialog_contact() if result.status < 300 else []
        resp = self.sip.response(tx, result.status, headers=[*headers, *result.headers])
        if result.sdp is not None:
            resp.body = result.sdp.serialize()
            resp.headers.add("Content-Type", SDP)
        self.sip.send_response(resp)
        if result.media is not None:
            log.info(
                f"{self.peer.prefix}_reoffer_answered",
                call=self.key,
                method=req.method,
                media=describe(result.media),
            )
        return result.media

    def dialog_contact(self) -> list[tuple[str, str]]:
        """Our Contact in a 2xx inside the dialog (the dialog's, else this leg's)."""
        dialog = self.dialog
        if dialog is not None:
            return [("Contact", f"<{dialog.local_contact}>")] if dialog.local_contact else []
        return self.contact_headers()

    def on_ack(self, ack: Request) -> MediaParams | None:
        """An ACK in the dialog; after an offer-less re-INVITE it carries the answer
        (RFC 3264 section 8; an unusable one leaves the media as it was)."""
        try:
            return self.session.on_ack(ack.body)
        except (SdpError, NegotiationError) as exc:
            log.warning(f"{self.peer.prefix}_ack_sdp_unusable", call=self.key, error=str(exc))
            return None

    # -- BYE and ACK ------------------------------------------------------------
    def bye(self, why: str, reason: str | None = None) -> None:
        """End this leg's dialog (RFC 3261 15.1.1), with a Reason (RFC 3326). A target
        refresh may have made it unroutable (a Contact that is not a SIP URI): then the
        BYE is not sent, and the call ends all the same."""
        dialog, self.dialog = self.dialog, None
        if dialog is None:
            return
        if not routable(dialog):
            log.warning("bye_unroutable", call=self.key, leg=self.peer.name)
            return
        headers = [("Reason", reason or f'SIP;cause=200;text="{why}"')]
        bye = dialog.create_request("BYE", headers=headers)
        # Meta's Contact carries ;ob (RFC 5626): reuse its connection while it is open,
        # else connect to the first route (wa.meta.vc:5061).
        via = self.peer.via
        self.sip.send_request(bye, via, dialog_target(dialog, via.transport, self.peer.conn_id))


class UasLeg(Leg):
    """The caller's leg: we are its UAS. Owns the server INVITE transaction."""

    def __init__(
        self,
        key: str,
        peer: Peer,
        sip: SipPort,
        session: Session,
        contact: str,
        tx: ServerTransaction,
        answer: SessionDescription,
    ) -> None:
        super().__init__(key, peer, sip, session, contact)
        self.tx = tx
        self.answer_sdp = answer  # our answer to the caller's offer, sent in the 2xx
        self.request = tx.request
        self._relayed: set[int] = set()

    @property
    def call_id(self) -> str:
        return self.request.call_id

    def provisional(self, status: int) -> None:
        """Relay ringing (180) or early media (183), each once. It carries our To tag,
        so it creates an early dialog at the caller (RFC 3261 12.1.1)."""
        relay = 183 if status == 183 else 180
        if relay in self._relayed:
            return
        self._relayed.add(relay)
        resp = self.sip.response(
            self.tx,
            relay,
            to_tag=self.tag,
            record_route=self.peer.early_record_route,
            headers=self.contact_headers(),
        )
        self.sip.send_response(resp)

    def answer(self) -> None:
        """Our 2xx to the caller (RFC 3261 13.3.1.4): its Record-Route echoed unchanged and
        in order, our Contact, the Allow of this side; the dialog starts (12.1.1)."""
        resp = self.sip.response(
            self.tx,
            200,
            to_tag=self.tag,
            record_route=True,
            headers=[*self.contact_headers(), ("Allow", self.peer.allow)],
        )
        resp.body = self.answer_sdp.serialize()
        resp.headers.add("Content-Type", SDP)
        self.dialog = Dialog.uas(self.request, self.tag, self.contact)
        self.sip.send_response(resp)

    def reject(
        self, status: int, headers: list[tuple[str, str]], phrase: str | None = None
    ) -> None:
        """A final failure to the caller's INVITE (``phrase``: the status line's reason
        phrase, default the status's own)."""
        self.sip.reply(self.tx, status, to_tag=self.tag, reason=phrase, headers=headers)


@dataclass
class InviteSpec:
    """The INVITE a UAC leg sends (before Via and User-Agent)."""

    uri: str  # Request-URI
    from_: str  # From without its tag
    to: str
    contact: str  # our Contact URI
    target: Target  # the next hop
    headers: list[tuple[str, str]] = field(default_factory=list)  # Allow, context headers
    password: Callable[[], str | None] | None = None  # digest: answer one challenge
    number: str = ""  # the business number (+E.164) the credentials are for


class UacLeg(Leg):
    """The callee's leg: we are its UAC. Owns the client INVITE transaction, answers a
    digest challenge once, hangs up a second fork that answered, CANCELs."""

    def __init__(
        self,
        key: str,
        peer: Peer,
        sip: SipPort,
        session: Session,
        spec: InviteSpec,
        call_id: str,
        offer: SessionDescription,
    ) -> None:
        super().__init__(key, peer, sip, session, spec.contact)
        self.spec = spec
        self.offer = offer
        self._call_id = call_id
        self.tx: ClientTransaction | None = None
        self.request: Request | None = None
        self.challenges = 0

    @property
    def call_id(self) -> str:
        return self._call_id

    def send_invite(self, cseq: int = 1, auth: tuple[tuple[str, str], ...] = ()) -> None:
        spec = self.spec
        req = Request(method="INVITE", uri=spec.uri, body=self.offer.serialize())
        h = req.headers
        h.add("Max-Forwards", "70")
        h.add("From", f"{spec.from_};tag={self.tag}")
        h.add("To", spec.to)
        h.add("Call-ID", self._call_id)
        h.add("CSeq", f"{cseq} INVITE")
        h.add("Contact", f"<{spec.contact}>")
        for name, value in (*spec.headers, *auth):
            h.add(name, value)
        h.add("Content-Type", SDP)
        self.request = req
        self.tx = self.sip.send_request(req, self.peer.via, spec.target)

    def cancel(self) -> None:
        """CANCEL our INVITE (RFC 3261 9.1; the transaction layer waits for a provisional)."""
        if self.tx is not None:
            self.sip.cancel(self.tx)

    def answer_challenge(self, resp: Response) -> tuple[str, bool] | None:
        """Answer a 401/407 with a new INVITE carrying credentials (RFC 3261 22.2, same
        Call-ID and From tag, CSeq + 1). None when sent, else (why not, whether our
        credentials were refused)."""
        header = "Proxy-Authenticate" if resp.status == 407 else "WWW-Authenticate"
        try:
            challenge = select_challenge([parse_challenge(v) for v in resp.headers.lines(header)])
        except (AuthParseError, UnsupportedChallenge, ValueError) as exc:
            log.warning(f"{self.peer.prefix}_challenge_unusable", call=self.key, error=str(exc))
            return f"unusable challenge from {self.peer.named}", False
        # One answer per call; a stale nonce (RFC 7616 3.3) earns one more try.
        if self.challenges >= (2 if challenge.stale else 1):
            return f"{self.peer.named} refused our credentials", True
        password = self.spec.password() if self.spec.password is not None else None
        if password is None:
            log.error("sip_password_missing", number=self.spec.number)
            return "SIP password missing", False
        self.challenges += 1
        username = self.spec.number.lstrip("+")  # Meta's digest username: no '+'
        creds = answer_challenge(challenge, "INVITE", self.spec.uri, username, password)
        auth_header = "Proxy-Authorization" if resp.status == 407 else "Authorization"
        self.send_invite(resp.cseq.seq + 1, ((auth_header, creds.to_header()),))
        return None

    def take_answer(self, resp: Response, retransmission: bool) -> Answer:
        """A 2xx to our INVITE: the dialog it creates (RFC 3261 13.2.2.4), ACKed; or another
        fork's (ACKed and hung up here, section 13.2.2.4 too); or unroutable."""
        if self.dialog is not None and (resp.to.tag or "") != self.dialog.remote_tag:
            hang_up_answer(
                self.sip,
                self.request or Request(),
                resp,
                self.peer.via,
                retransmission,
                FORK_REASON,
            )
            if not retransmission:
                log.info(f"{self.peer.prefix}_fork_hung_up", call=self.key)
            return "fork"
        if self.dialog is None:
            # The Record-Route (reversed) is the route set, the Contact the target.
            dialog = Dialog.uac(self.request or Request(), resp)
            if not routable(dialog):  # neither an ACK nor a BYE can reach it
                return "unroutable"
            self.dialog = dialog
        ack = self.dialog.create_ack(resp.cseq.seq)
        via = self.peer.via
        self.sip.send_ack(ack, via, dialog_target(self.dialog, via.transport))
        return "ours"
