"""Sans-IO ICE: the STUN codec (RFC 5389, RFC 8445 section 16) and the ICE agent.

:mod:`gateway.ice.agent` checks, nominates and keeps consent (RFC 8445, RFC 7675)
for one component over the media socket; DTLS-SRTP (issue 14) runs on its
nominated pair.
"""
