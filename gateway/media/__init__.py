"""Media protocol core: RTP/RTCP, SRTP, codecs, RFC 4733 events, reordering.

Sans-IO and allocation-lean: bytes and a caller-supplied clock in, bytes out;
no sockets, no asyncio, no threads, no wall-clock reads.  Modules are imported
individually (``gateway.media.rtp`` etc.) so a user of one does not pay for
loading libopus or libsrtp.
"""
