"""Media protocol core: RTP/RTCP, SRTP, codecs, RFC 4733 events, reordering.

The codec, RTP/RTCP, SRTP, DTMF and jitter modules are sans-IO and
allocation-lean: bytes and a caller-supplied clock in, bytes out; no sockets,
no asyncio, no threads, no wall-clock reads.  ``leg`` and ``bridge`` join them
to the RTP sockets of :mod:`gateway.transport.rtp` (media sits above
transport), configured by plain :class:`~gateway.media.settings.MediaSettings`,
never the config model.  Modules are imported
individually (``gateway.media.rtp`` etc.) so a user of one does not pay for
loading libopus or libsrtp.
"""
