"""SDP for the gateway, sans-IO: the model, parser and serialiser (``session``), SDES
key parameters (``crypto``) and offer/answer for both legs (``negotiate``)."""

from gateway.sdp.crypto import Crypto, KeyParam, parse_crypto, redact_attribute, redact_sdp_text
from gateway.sdp.negotiate import (
    SUITE_KEY_LENGTHS,
    SUITE_PREFERENCE,
    MediaParams,
    NegotiationError,
    SrtpParams,
    accept_pbx_answer,
    accept_whatsapp_answer,
    answer_direction,
    answer_pbx_offer,
    answer_whatsapp_offer,
    describe,
    make_pbx_offer,
    make_whatsapp_offer,
    random_key,
    reoffer,
)
from gateway.sdp.session import (
    Bandwidth,
    Connection,
    MediaDescription,
    Origin,
    RtcpAttribute,
    RtpMap,
    SdpError,
    SessionDescription,
    Ssrc,
    Timing,
    parse_sdp,
)

__all__ = [
    "SUITE_KEY_LENGTHS", "SUITE_PREFERENCE", "Bandwidth", "Connection", "Crypto", "KeyParam",
    "MediaDescription", "MediaParams", "NegotiationError", "Origin", "RtcpAttribute", "RtpMap",
    "SdpError", "SessionDescription", "SrtpParams", "Ssrc", "Timing", "accept_pbx_answer",
    "accept_whatsapp_answer", "answer_direction", "answer_pbx_offer", "answer_whatsapp_offer",
    "describe", "make_pbx_offer", "make_whatsapp_offer", "parse_crypto", "parse_sdp",
    "random_key", "redact_attribute", "redact_sdp_text", "reoffer",
]  # fmt: skip
