"""Sans-IO ICE: the STUN codec (RFC 5389, RFC 8445 section 16).

The ICE agent and DTLS-SRTP of issue 14 build on it.
"""
