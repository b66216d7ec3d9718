# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The native media engine: the per-packet steady state of a call in C.

Built by Cython (setup.py, optional); gateway.media.native wraps it. What it does
per packet is what gateway.media.bridge.Bridge's fast paths do, on the same
objects: the Leg, RtpSender, ReceiveStats, ReorderBuffer and codec objects of the
Python engine hold the state, and this code reads and writes their attributes.
Only the libsrtp sessions are native (:class:`Srtp`, the same surface as
gateway.media.srtp.SrtpContext), because pylibsrtp's sessions live in its own
copy of libsrtp; the Python paths use them through that surface. Anything but the
steady state (RTCP, DTMF, a gap, a foreign source, an SRTP failure, passthrough,
hold) is handed to the Python bridge unchanged.
"""

from libc.stdint cimport int16_t, int32_t, uint8_t, uint16_t, uint32_t, int64_t
from libc.string cimport memcpy, memset, memcmp
from libc.math cimport fmod, copysign
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE


cdef extern from "<errno.h>":
    int errno

cdef extern from "<time.h>":
    ctypedef long time_t
    struct timespec:
        time_t tv_sec
        long tv_nsec
    int CLOCK_MONOTONIC
    int clock_gettime(int clk, timespec *ts)

cdef extern from "<sys/socket.h>":
    ctypedef unsigned int socklen_t
    ctypedef unsigned short sa_family_t
    struct sockaddr:
        sa_family_t sa_family
    struct sockaddr_storage:
        sa_family_t ss_family
    int AF_INET
    int AF_INET6
    int MSG_DONTWAIT
    ssize_t recvfrom(int fd, void *buf, size_t n, int flags, sockaddr *addr, socklen_t *alen)
    ssize_t sendto(int fd, const void *buf, size_t n, int flags, const sockaddr *addr,
                   socklen_t alen)

cdef extern from "<netinet/in.h>":
    struct in_addr:
        uint32_t s_addr
    struct sockaddr_in:
        sa_family_t sin_family
        uint16_t sin_port
        in_addr sin_addr
    struct in6_addr:
        pass
    struct sockaddr_in6:
        sa_family_t sin6_family
        uint16_t sin6_port
        uint32_t sin6_flowinfo
        in6_addr sin6_addr
        uint32_t sin6_scope_id
    uint16_t htons(uint16_t)
    uint16_t ntohs(uint16_t)
    uint32_t ntohl(uint32_t)

cdef extern from "<arpa/inet.h>":
    int inet_pton(int af, const char *src, void *dst)
    const char *inet_ntop(int af, const void *src, char *dst, socklen_t size)

cdef extern from "<sys/epoll.h>":
    union epoll_data:
        int fd
    struct epoll_event:
        uint32_t events
        epoll_data data
    int epoll_wait(int epfd, epoll_event *events, int maxevents, int timeout)

cdef extern from "<srtp2/srtp.h>":
    ctypedef struct srtp_ctx_t:
        pass
    ctypedef srtp_ctx_t *srtp_t
    ctypedef int srtp_err_status_t
    int srtp_err_status_ok
    int srtp_err_status_replay_fail
    int srtp_err_status_replay_old
    ctypedef int srtp_profile_t
    ctypedef enum srtp_ssrc_type_t:
        ssrc_any_inbound
        ssrc_any_outbound
    ctypedef struct srtp_ssrc_t:
        srtp_ssrc_type_t type
        unsigned int value
    ctypedef struct srtp_crypto_policy_t:
        pass
    ctypedef struct srtp_policy_t:
        srtp_ssrc_t ssrc
        srtp_crypto_policy_t rtp
        srtp_crypto_policy_t rtcp
        unsigned char *key
        unsigned long window_size
        int allow_repeat_tx
        srtp_policy_t *next
    srtp_err_status_t srtp_init()
    srtp_err_status_t srtp_create(srtp_t *session, const srtp_policy_t *policy)
    srtp_err_status_t srtp_dealloc(srtp_t session)
    srtp_err_status_t srtp_protect(srtp_t ctx, void *rtp_hdr, int *len_ptr)
    srtp_err_status_t srtp_unprotect(srtp_t ctx, void *srtp_hdr, int *len_ptr)
    srtp_err_status_t srtp_protect_rtcp(srtp_t ctx, void *rtcp_hdr, int *pkt_octet_len)
    srtp_err_status_t srtp_unprotect_rtcp(srtp_t ctx, void *srtcp_hdr, int *pkt_octet_len)
    srtp_err_status_t srtp_crypto_policy_set_from_profile_for_rtp(
        srtp_crypto_policy_t *policy, srtp_profile_t profile)
    srtp_err_status_t srtp_crypto_policy_set_from_profile_for_rtcp(
        srtp_crypto_policy_t *policy, srtp_profile_t profile)
    const char *srtp_get_version_string()

# One libsrtp's entry points. Two builds of libsrtp 2 can be in the process: the
# system's (Debian's libsrtp2, linked; Debian builds it with NSS) and the one
# pylibsrtp ships (with OpenSSL), whose public C functions its cffi module exposes.
# A session is used and freed only through the table that made it.
ctypedef srtp_err_status_t (*create_f)(srtp_t *, const srtp_policy_t *)
ctypedef srtp_err_status_t (*dealloc_f)(srtp_t)
ctypedef srtp_err_status_t (*process_f)(srtp_t, void *, int *)
ctypedef srtp_err_status_t (*profile_f)(srtp_crypto_policy_t *, srtp_profile_t)
ctypedef const char *(*version_f)()

ctypedef struct SrtpApi:
    create_f create
    dealloc_f dealloc
    process_f protect
    process_f unprotect
    process_f protect_rtcp
    process_f unprotect_rtcp
    profile_f for_rtp
    profile_f for_rtcp
    version_f version

cdef extern from "<opus/opus.h>":
    ctypedef struct OpusEncoder:
        pass
    ctypedef struct OpusDecoder:
        pass
    int opus_decode(OpusDecoder *st, const unsigned char *data, int32_t len, int16_t *pcm,
                    int frame_size, int decode_fec)
    int32_t opus_encode(OpusEncoder *st, const int16_t *pcm, int frame_size,
                        unsigned char *data, int32_t max_data_bytes)


import audioop

from gateway.media.codecs import CodecError, OpusCodec, PcmaCodec, PcmuCodec
from gateway.media.srtp import SrtpAuthError, SrtpError, _check_length, _suite
from gateway.media.rtcp import _MAX_DROPOUT
from gateway.transport.rtp import FRAME_SAMPLE, RtpSocket

# pylibsrtp's session buffer (1500 octets) and trailer room, so a packet one engine
# refuses as too long the other refuses too.
DEF BUFFER = 1500
DEF RTP_TRAILER = 16 + 128
DEF RTCP_TRAILER = 4 + 16 + 128
DEF RECV_SIZE = 2048
DEF MAX_PACKET = 4000
DEF MAX_DECODE = 960
DEF POLL_EVENTS = 1024

# The libsrtp error strings pylibsrtp raises with (its table, by status code).
_ERRORS = (
    "nothing to report", "unspecified failure", "unsupported parameter",
    "couldn't allocate memory", "couldn't deallocate properly", "couldn't initialize",
    "can't process as much data as requested", "authentication failure", "cipher failure",
    "replay check failed (bad index)", "replay check failed (index too old)",
    "algorithm failed test routine", "unsupported operation", "no appropriate context found",
    "unable to perform desired validation", "can't use key any more", "error in use of socket",
    "error in use POSIX signals", "nonce check failed", "couldn't read data",
    "couldn't write data", "error parsing data", "error encoding data",
    "error while using semaphores", "error while using pfkey",
    "error MKI present in packet is invalid", "packet index is too old to consider",
    "packet index advanced, reset needed",
)

cdef str _error_text(int status):
    if 0 <= status < len(_ERRORS):
        return _ERRORS[status]
    return f"libsrtp error {status}"


if srtp_init() != srtp_err_status_ok:
    raise ImportError("libsrtp2 failed to initialise")

cdef SrtpApi SYSTEM_SRTP
SYSTEM_SRTP.create = srtp_create
SYSTEM_SRTP.dealloc = srtp_dealloc
SYSTEM_SRTP.protect = srtp_protect
SYSTEM_SRTP.unprotect = srtp_unprotect
SYSTEM_SRTP.protect_rtcp = srtp_protect_rtcp
SYSTEM_SRTP.unprotect_rtcp = srtp_unprotect_rtcp
SYSTEM_SRTP.for_rtp = srtp_crypto_policy_set_from_profile_for_rtp
SYSTEM_SRTP.for_rtcp = srtp_crypto_policy_set_from_profile_for_rtcp
SYSTEM_SRTP.version = srtp_get_version_string
cdef SrtpApi BUNDLED_SRTP
cdef SrtpApi *SRTP_API = &SYSTEM_SRTP
cdef str SRTP_BACKEND = "system"


def _bundled_srtp():
    """pylibsrtp's libsrtp entry points, if its build has our srtp_policy_t layout."""
    from pylibsrtp._binding import ffi, lib  # imported: pylibsrtp has run srtp_init

    if ffi.sizeof("srtp_policy_t") != sizeof(srtp_policy_t):
        return None
    cdef srtp_policy_t probe
    offsets = {
        "ssrc": <size_t>&probe.ssrc - <size_t>&probe,
        "rtp": <size_t>&probe.rtp - <size_t>&probe,
        "rtcp": <size_t>&probe.rtcp - <size_t>&probe,
        "key": <size_t>&probe.key - <size_t>&probe,
        "window_size": <size_t>&probe.window_size - <size_t>&probe,
        "allow_repeat_tx": <size_t>&probe.allow_repeat_tx - <size_t>&probe,
    }
    for field, offset in offsets.items():
        if ffi.offsetof("srtp_policy_t", field) != offset:
            return None
    if ffi.sizeof("srtp_crypto_policy_t") != sizeof(srtp_crypto_policy_t):
        return None
    names = (
        "srtp_create", "srtp_dealloc", "srtp_protect", "srtp_unprotect", "srtp_protect_rtcp",
        "srtp_unprotect_rtcp", "srtp_crypto_policy_set_from_profile_for_rtp",
        "srtp_crypto_policy_set_from_profile_for_rtcp",
    )
    return [int(ffi.cast("uintptr_t", ffi.addressof(lib, name))) for name in names]


def use_srtp(str backend):
    """Which libsrtp new sessions run on: "pylibsrtp" (the build pylibsrtp ships, the one
    the Python engine uses), "system" (the linked libsrtp2), or "auto" (pylibsrtp's when
    its layout matches, else the system's). Returns the backend in force and its version."""
    global SRTP_API, SRTP_BACKEND
    if backend not in ("auto", "pylibsrtp", "system"):
        raise ValueError(f"unknown SRTP backend {backend!r}")
    if backend == "system":
        SRTP_API, SRTP_BACKEND = &SYSTEM_SRTP, "system"
    else:
        try:
            found = _bundled_srtp()
        except (ImportError, AttributeError, KeyError, TypeError):
            found = None
        if found is None:
            if backend == "pylibsrtp":
                raise ValueError("pylibsrtp's libsrtp has another layout or entry points")
            SRTP_API, SRTP_BACKEND = &SYSTEM_SRTP, "system"
        else:
            BUNDLED_SRTP.create = <create_f><size_t>found[0]
            BUNDLED_SRTP.dealloc = <dealloc_f><size_t>found[1]
            BUNDLED_SRTP.protect = <process_f><size_t>found[2]
            BUNDLED_SRTP.unprotect = <process_f><size_t>found[3]
            BUNDLED_SRTP.protect_rtcp = <process_f><size_t>found[4]
            BUNDLED_SRTP.unprotect_rtcp = <process_f><size_t>found[5]
            BUNDLED_SRTP.for_rtp = <profile_f><size_t>found[6]
            BUNDLED_SRTP.for_rtcp = <profile_f><size_t>found[7]
            BUNDLED_SRTP.version = NULL  # not among what pylibsrtp exposes
            SRTP_API, SRTP_BACKEND = &BUNDLED_SRTP, "pylibsrtp"
    return srtp_backend()


def srtp_backend():
    """(backend, libsrtp version) of the sessions made now."""
    if SRTP_API.version is NULL:
        import pylibsrtp

        return SRTP_BACKEND, f"pylibsrtp {pylibsrtp.__version__}"
    return SRTP_BACKEND, SRTP_API.version().decode("ascii", "replace")


use_srtp("auto")


# --------------------------------------------------------------------------- G.711
# Tables made by audioop itself: bit for bit what the Python engine computes.
cdef int16_t ULAW_DEC[256]
cdef int16_t ALAW_DEC[256]
cdef uint8_t ULAW_ENC[65536]
cdef uint8_t ALAW_ENC[65536]


def _make_tables():
    cdef int i
    cdef bytes every = bytes(range(256))
    cdef bytes ul = audioop.ulaw2lin(every, 2)
    cdef bytes al = audioop.alaw2lin(every, 2)
    memcpy(ULAW_DEC, PyBytes_AS_STRING(ul), 512)
    memcpy(ALAW_DEC, PyBytes_AS_STRING(al), 512)
    cdef int16_t[65536] samples
    for i in range(65536):
        samples[i] = <int16_t>(<uint16_t>i)
    cdef bytes pcm = PyBytes_FromStringAndSize(<char *>samples, 131072)
    cdef bytes ue = audioop.lin2ulaw(pcm, 2)
    cdef bytes ae = audioop.lin2alaw(pcm, 2)
    memcpy(ULAW_ENC, PyBytes_AS_STRING(ue), 65536)
    memcpy(ALAW_ENC, PyBytes_AS_STRING(ae), 65536)


_make_tables()

DEF KIND_NONE = 0
DEF KIND_OPUS = 1
DEF KIND_PCMU = 2
DEF KIND_PCMA = 3


# --------------------------------------------------------------------------- SRTP


cdef class Srtp:
    """SRTP/SRTCP for one call leg on the system's libsrtp2: the surface of
    gateway.media.srtp.SrtpContext (the same suites, checks, errors and counters)."""

    cdef srtp_t _tx
    cdef srtp_t _rx
    cdef SrtpApi *api  # the libsrtp that made the sessions
    cdef readonly str backend
    cdef unsigned char _buf[BUFFER]
    cdef readonly str suite
    cdef public long auth_failures
    cdef public long replays

    def __cinit__(self):
        self._tx = NULL
        self._rx = NULL
        self.api = SRTP_API
        self.backend = SRTP_BACKEND

    def __init__(self, str suite, bytes local_material, bytes remote_material):
        info = _suite(suite)
        _check_length(local_material, suite)
        _check_length(remote_material, suite)
        self.suite = suite
        self.auth_failures = 0
        self.replays = 0
        self._tx = self._session(info.profile, local_material, ssrc_any_outbound)
        self._rx = self._session(info.profile, remote_material, ssrc_any_inbound)

    cdef srtp_t _session(self, int profile, bytes key, srtp_ssrc_type_t kind) except NULL:
        cdef srtp_policy_t policy
        cdef srtp_t session = NULL
        memset(&policy, 0, sizeof(policy))
        if self.api.for_rtp(&policy.rtp, profile) != srtp_err_status_ok:
            raise SrtpError(f"SRTP profile {profile} unsupported")
        if self.api.for_rtcp(&policy.rtcp, profile) != srtp_err_status_ok:
            raise SrtpError(f"SRTCP profile {profile} unsupported")
        policy.ssrc.type = kind
        policy.key = <unsigned char *>PyBytes_AS_STRING(key)  # copied by srtp_create
        cdef int status = self.api.create(&session, &policy)
        if status != srtp_err_status_ok:
            raise SrtpError(f"SRTP session failed: {_error_text(status)}")
        return session

    def __dealloc__(self):
        if self._tx is not NULL:
            self.api.dealloc(self._tx)
        if self._rx is not NULL:
            self.api.dealloc(self._rx)

    cdef bytes _run(self, object data, int which, int trailer, bint inbound):
        if type(data) is not bytes:
            raise TypeError("packet must be bytes")
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
        if n > BUFFER - trailer:
            raise ValueError("packet is too long")
        memcpy(self._buf, PyBytes_AS_STRING(data), n)
        cdef int length = <int>n
        cdef int status
        if which == 0:
            status = self.api.protect(self._tx, self._buf, &length)
        elif which == 1:
            status = self.api.protect_rtcp(self._tx, self._buf, &length)
        elif which == 2:
            status = self.api.unprotect(self._rx, self._buf, &length)
        else:
            status = self.api.unprotect_rtcp(self._rx, self._buf, &length)
        if status != srtp_err_status_ok:
            raise _Failure(status)
        return PyBytes_FromStringAndSize(<char *>self._buf, length)

    def protect(self, data):
        try:
            return self._run(data, 0, RTP_TRAILER, False)
        except (_Failure, ValueError, TypeError) as exc:
            raise SrtpError(f"SRTP protect failed: {exc}") from None

    def protect_rtcp(self, data):
        try:
            return self._run(data, 1, RTCP_TRAILER, False)
        except (_Failure, ValueError, TypeError) as exc:
            raise SrtpError(f"SRTCP protect failed: {exc}") from None

    def unprotect(self, data):
        try:
            return self._run(data, 2, 0, True)
        except (_Failure, ValueError, TypeError) as exc:
            error = _auth_error(exc)
        self._count(error)
        raise error

    def unprotect_rtcp(self, data):
        try:
            return self._run(data, 3, 0, True)
        except (_Failure, ValueError, TypeError) as exc:
            error = _auth_error(exc)
        self._count(error)
        raise error

    cdef void _count(self, object error):
        if error.replay:
            self.replays += 1
        else:
            self.auth_failures += 1

    def __repr__(self):
        return f"Srtp(suite={self.suite!r}, backend={self.backend!r})"  # never the keys


class _Failure(Exception):
    def __init__(self, int status):
        super().__init__(_error_text(status))


cdef object _auth_error(object exc):
    message = str(exc)
    return SrtpAuthError(message, replay=message.startswith("replay check failed"))


# --------------------------------------------------------------------------- helpers


cdef inline double _monotonic():
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef inline int64_t _ns():
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


cdef inline double _pymod(double x, double m):
    """Python's float ``%`` (the result takes the divisor's sign)."""
    cdef double r = fmod(x, m)
    if r != 0.0:
        if (m < 0) != (r < 0):
            r += m
    else:
        r = copysign(0.0, m)
    return r


cdef object _address(sockaddr_storage *ss):
    """The address tuple Python's socket.recvfrom gives for ``ss``."""
    cdef char text[64]
    cdef sockaddr_in *v4
    cdef sockaddr_in6 *v6
    if ss.ss_family == AF_INET:
        v4 = <sockaddr_in *>ss
        inet_ntop(AF_INET, &v4.sin_addr, text, 64)
        return (text.decode("ascii"), ntohs(v4.sin_port))
    v6 = <sockaddr_in6 *>ss
    inet_ntop(AF_INET6, &v6.sin6_addr, text, 64)
    return (text.decode("ascii"), ntohs(v6.sin6_port), ntohl(v6.sin6_flowinfo), v6.sin6_scope_id)


cdef class _Addr:
    """A Python address tuple and its sockaddr, parsed once per tuple object."""

    cdef object key  # the tuple this was parsed from (kept: identity is the cache key)
    cdef sockaddr_storage sa
    cdef socklen_t length
    cdef bint ok

    cdef void parse(self, object addr, int family):
        self.key = addr
        self.ok = False
        memset(&self.sa, 0, sizeof(self.sa))
        cdef sockaddr_in *v4 = <sockaddr_in *>&self.sa
        cdef sockaddr_in6 *v6 = <sockaddr_in6 *>&self.sa
        if type(addr) is not tuple or len(addr) < 2:
            return
        host, port = addr[0], addr[1]
        if type(host) is not str or type(port) is not int or not 0 <= port <= 65535:
            return
        cdef bytes raw = host.encode("ascii", "replace")
        cdef char text[64]
        if family == AF_INET:
            if inet_pton(AF_INET, raw, &v4.sin_addr) != 1:
                return
            inet_ntop(AF_INET, &v4.sin_addr, text, 64)
            v4.sin_family = AF_INET
            v4.sin_port = htons(port)
            self.length = sizeof(sockaddr_in)
        else:
            if inet_pton(AF_INET6, raw, &v6.sin6_addr) != 1:
                return
            inet_ntop(AF_INET6, &v6.sin6_addr, text, 64)
            v6.sin6_family = AF_INET6
            v6.sin6_port = htons(port)
            self.length = sizeof(sockaddr_in6)
        # Only the text the kernel's address gives (socket.recvfrom): the Python engine
        # compares strings, so "127.000.000.001" or "2001:DB8::1" is never the source.
        self.ok = text.decode("ascii") == host

    cdef bint same(self, sockaddr_storage *ss):
        """``ss`` is this address (host and port; IPv6 flow info and scope aside)."""
        cdef sockaddr_in *a
        cdef sockaddr_in *b
        cdef sockaddr_in6 *a6
        cdef sockaddr_in6 *b6
        if not self.ok or ss.ss_family != self.sa.ss_family:
            return False
        if ss.ss_family == AF_INET:
            a = <sockaddr_in *>ss
            b = <sockaddr_in *>&self.sa
            return a.sin_port == b.sin_port and a.sin_addr.s_addr == b.sin_addr.s_addr
        a6 = <sockaddr_in6 *>ss
        b6 = <sockaddr_in6 *>&self.sa
        return a6.sin6_port == b6.sin6_port and memcmp(&a6.sin6_addr, &b6.sin6_addr, 16) == 0


cdef class _Codec:
    """What the engine needs of one leg's codec object (the object owns the state)."""

    cdef object key
    cdef int kind
    cdef OpusDecoder *dec
    cdef OpusEncoder *enc

    cdef void load(self, object codec):
        self.key = codec
        self.dec = NULL
        self.enc = NULL
        cdef type t = type(codec)
        if t is OpusCodec:
            self.kind = KIND_OPUS
            self.dec = <OpusDecoder *><size_t>codec._decoder_ptr.value
            self.enc = <OpusEncoder *><size_t>codec._encoder_ptr.value
        elif t is PcmuCodec:
            self.kind = KIND_PCMU
        elif t is PcmaCodec:
            self.kind = KIND_PCMA
        else:
            self.kind = KIND_NONE


# --------------------------------------------------------------------------- the engine

DEF WHATSAPP = 0
DEF PBX = 1


cdef class Fast:
    """One call's native fast path over a gateway.media.bridge.Bridge."""

    cdef object bridge
    cdef object wa
    cdef object pbx
    cdef object slow_wa  # Bridge.on_whatsapp_packet, bound: the Python engine's way
    cdef object slow_pbx
    cdef bint monotonic  # the bridge's clock is the loop's (time.monotonic)
    cdef object time
    cdef _Codec wa_codec
    cdef _Codec pbx_codec
    cdef _Addr wa_source
    cdef _Addr pbx_source
    cdef _Addr wa_remote
    cdef _Addr pbx_remote
    cdef int16_t pcm[MAX_DECODE]
    cdef unsigned char work[RECV_SIZE]
    cdef unsigned char out[MAX_PACKET + 12 + RTP_TRAILER]
    cdef readonly long fast_packets  # taken by the fast path (both directions)
    cdef readonly long slow_packets  # handed to the Python bridge
    cdef readonly FastSide whatsapp_side
    cdef readonly FastSide pbx_side

    def __init__(self, bridge, slow_wa, slow_pbx, time, bint monotonic):
        self.bridge = bridge
        self.wa = bridge.wa
        self.pbx = bridge.pbx
        self.slow_wa = slow_wa
        self.slow_pbx = slow_pbx
        self.time = time
        self.monotonic = monotonic
        self.wa_codec = _Codec()
        self.pbx_codec = _Codec()
        self.wa_source = _Addr()
        self.pbx_source = _Addr()
        self.wa_remote = _Addr()
        self.pbx_remote = _Addr()
        self.whatsapp_side = FastSide(self, WHATSAPP)
        self.pbx_side = FastSide(self, PBX)

    cdef inline double _now(self) except? -1.0:
        if self.monotonic:
            return _monotonic()
        return self.time()

    # -- entry points with a Python datagram (the bridge's handlers, the tests)
    def whatsapp(self, bytes data, object addr):
        """Handle one datagram from the WhatsApp leg's socket the engine's way."""
        cdef const unsigned char *d = <const unsigned char *>PyBytes_AS_STRING(data)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
        if addr == self.wa.source and self._whatsapp(d, n, self._now()):
            self.fast_packets += 1
            return
        self.slow_packets += 1
        self.slow_wa(data, addr)

    def from_pbx(self, bytes data, object addr):
        """Handle one datagram from the PBX leg's socket the engine's way."""
        cdef const unsigned char *d = <const unsigned char *>PyBytes_AS_STRING(data)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
        if addr == self.pbx.source and self._pbx(d, n, self._now()):
            self.fast_packets += 1
            return
        self.slow_packets += 1
        self.slow_pbx(data, addr)

    # -- entry point from the poller (a datagram still in C)
    cdef int take(self, int side, const unsigned char *d, Py_ssize_t n,
                  sockaddr_storage *ss) except -1:
        cdef object leg
        cdef _Addr source
        if side == WHATSAPP:
            leg, source = self.wa, self.wa_source
        else:
            leg, source = self.pbx, self.pbx_source
        src = leg.source
        if src is not source.key:
            source.parse(src, ss.ss_family)
        if source.same(ss):
            if side == WHATSAPP:
                if self._whatsapp(d, n, self._now()):
                    self.fast_packets += 1
                    return 1
            elif self._pbx(d, n, self._now()):
                self.fast_packets += 1
                return 1
        self.slow_packets += 1
        data = PyBytes_FromStringAndSize(<const char *>d, n)
        addr = _address(ss)
        if side == WHATSAPP:
            self.slow_wa(data, addr)
        else:
            self.slow_pbx(data, addr)
        return 0

    # -- WhatsApp -> PBX: Bridge.on_whatsapp_packet's fast path
    cdef bint _whatsapp(self, const unsigned char *d, Py_ssize_t n, double now) except -1:
        if n <= 12 or d[0] != 0x80 or n > BUFFER:
            return False
        cdef int pt = d[1] & 0x7F
        if 64 <= pt <= 95:
            return False  # RTCP
        wa = self.wa
        srtp = wa.srtp
        if type(srtp) is not Srtp:
            return False  # none yet, or another engine's session: the Python way
        if pt != wa.rx_pt:
            return False
        dtmf = wa.rx_dtmf_pt
        if dtmf is not None and pt == dtmf:
            return False
        bridge = self.bridge
        if bridge._passthrough:
            return False
        pbx = self.pbx
        sender = pbx.sender
        if sender is None:
            return False
        cdef uint16_t seq = (d[2] << 8) | d[3]
        reorder = wa.reorder
        expected = reorder._next
        if expected is None or <long>expected != seq or reorder._pending:
            return False
        rx = wa.rx
        codec_in = wa.codec
        codec_out = pbx.codec
        if rx is None or codec_in is None or codec_out is None:
            return False
        if codec_in is not self.wa_codec.key:
            self.wa_codec.load(codec_in)
        if codec_out is not self.pbx_codec.key:
            self.pbx_codec.load(codec_out)
        if self.wa_codec.kind == KIND_NONE or self.pbx_codec.kind == KIND_NONE:
            return False
        if self.wa_codec.kind != KIND_OPUS and n - 12 > MAX_DECODE:
            return False  # G.711 longer than the PCM buffer (over 120 ms): the Python way
        # Everything above only read: now the packet is taken (or, if it does not
        # authenticate, handed over untouched: libsrtp changes nothing on a failure).
        memcpy(self.work, d, n)
        cdef int length = <int>n
        if (<Srtp>srtp).api.unprotect((<Srtp>srtp)._rx, self.work, &length) != srtp_err_status_ok:
            return False
        if length <= 12:
            # Authentic but empty: the rest of the Python path, on the plain packet.
            bridge._whatsapp_rtp(PyBytes_FromStringAndSize(<char *>self.work, length), now)
            return True
        cdef uint32_t ts = ((<uint32_t>d[4] << 24) | (<uint32_t>d[5] << 16)
                            | (<uint32_t>d[6] << 8) | d[7])
        cdef uint32_t ssrc = ((<uint32_t>d[8] << 24) | (<uint32_t>d[9] << 16)
                              | (<uint32_t>d[10] << 8) | d[11])
        cdef int plen = length - 12
        reorder._next = (seq + 1) & 0xFFFF
        wa.rx_packets += 1
        wa.rx_octets += plen
        wa.last_rx = now
        rx.ssrc = ssrc
        _received(rx, seq, ts, now)
        last = bridge._wa_src_ts
        if last is not None and ((ts - <uint32_t>(<long>last)) & 0xFFFFFFFF) == <long>wa.samples:
            bridge._wa_src_ts = ts
        else:
            bridge._follow_source_clock(ts)
        cdef int samples = self._decode(self.wa_codec, codec_in, self.work + 12, plen, wa)
        cdef int olen = self._encode(self.pbx_codec, codec_out, samples)
        self._send(pbx, sender, pbx.pt, olen, pbx.samples)
        return True

    # -- PBX -> WhatsApp: Bridge.on_pbx_packet's fast path
    cdef bint _pbx(self, const unsigned char *d, Py_ssize_t n, double now) except -1:
        if n <= 12 or d[0] != 0x80 or n > RECV_SIZE:
            return False
        cdef int pt = d[1] & 0x7F
        if 64 <= pt <= 95:
            return False
        pbx = self.pbx
        if pt != pbx.rx_pt:
            return False
        dtmf = pbx.rx_dtmf_pt
        if dtmf is not None and pt == dtmf:
            return False
        bridge = self.bridge
        if bridge._passthrough:
            return False
        rx = pbx.rx
        codec_in = pbx.codec
        if rx is None or codec_in is None:
            return False
        if codec_in is not self.pbx_codec.key:
            self.pbx_codec.load(codec_in)
        if self.pbx_codec.kind == KIND_NONE:
            return False
        cdef uint16_t seq = (d[2] << 8) | d[3]
        cdef uint32_t ts = ((<uint32_t>d[4] << 24) | (<uint32_t>d[5] << 16)
                            | (<uint32_t>d[6] << 8) | d[7])
        cdef uint32_t ssrc = ((<uint32_t>d[8] << 24) | (<uint32_t>d[9] << 16)
                              | (<uint32_t>d[10] << 8) | d[11])
        cdef int plen = <int>n - 12
        pbx.rx_packets += 1
        pbx.rx_octets += plen
        pbx.last_rx = now
        rx.ssrc = ssrc
        _received(rx, seq, ts, now)
        bridge._last_pbx_audio = now
        cdef int samples
        if self.pbx_codec.kind == KIND_OPUS:
            samples = opus_decode(self.pbx_codec.dec, d + 12, plen, self.pcm, MAX_DECODE, 0)
            if samples < 0:
                raise CodecError(f"Opus decode failed ({samples})")
            codec_in._conceal_samples = samples
            pcm = PyBytes_FromStringAndSize(<char *>self.pcm, 2 * samples)
        else:
            samples = plen
            pcm = self._g711_decode(self.pbx_codec.kind, codec_in, d + 12, plen)
        if samples == 160 and not bridge._pcm_in:
            if bridge._wa_ready:
                self._to_whatsapp()
            else:
                bridge._early.append(pcm)
            return True
        bridge._reframe_to_whatsapp(pcm)
        return True

    cdef int _to_whatsapp(self) except -1:
        """Bridge._pcm_to_whatsapp for the 20 ms frame in ``self.pcm``."""
        wa = self.wa
        codec = wa.codec
        sender = wa.sender
        if codec is None or sender is None:
            return 0
        if codec is not self.wa_codec.key:
            self.wa_codec.load(codec)
        if self.wa_codec.kind == KIND_NONE:
            wa.send(sender.next_packet(
                wa.pt, codec.encode(PyBytes_FromStringAndSize(<char *>self.pcm, 320)), wa.samples))
            return 0
        cdef int olen = self._encode(self.wa_codec, codec, 160)
        self._send(wa, sender, wa.pt, olen, wa.samples)
        return 0

    # -- codecs (on the codec objects' own state)
    cdef int _decode(self, _Codec c, object codec, const unsigned char *payload, int plen,
                     object leg) except -1:
        """Decode into self.pcm; a corrupt frame is counted and concealed, as the
        Python engine does. Returns the samples."""
        cdef int samples
        if c.kind == KIND_OPUS:
            samples = opus_decode(c.dec, payload, plen, self.pcm, MAX_DECODE, 0)
            if samples >= 0:
                codec._conceal_samples = samples
                return samples
            leg.rx_bad += 1
            pcm = codec.conceal()
            samples = min(<int>(len(pcm) // 2), MAX_DECODE)
            memcpy(self.pcm, PyBytes_AS_STRING(pcm), 2 * samples)
            return samples
        self._g711_decode(c.kind, codec, payload, plen)
        return plen

    cdef bytes _g711_decode(self, int kind, object codec, const unsigned char *payload,
                            int plen):
        cdef int i
        cdef int count = min(plen, MAX_DECODE)
        cdef const int16_t *table = &ALAW_DEC[0]
        if kind == KIND_PCMU:
            table = &ULAW_DEC[0]
        for i in range(count):
            self.pcm[i] = table[payload[i]]
        if count < plen:
            # Longer than the buffer (never at 20-120 ms): the Python codec does it.
            pcm = codec.decode(PyBytes_FromStringAndSize(<const char *>payload, plen))
            return pcm
        pcm = PyBytes_FromStringAndSize(<char *>self.pcm, 2 * plen)
        codec._last = pcm
        codec._losses = 0
        return pcm

    cdef int _encode(self, _Codec c, object codec, int samples) except -1:
        """Encode self.pcm[:samples] into self.out after the 12-octet header room."""
        cdef int i
        cdef int32_t n
        cdef unsigned char *out = self.out + 12
        cdef const uint8_t *table
        if c.kind == KIND_OPUS:
            n = opus_encode(c.enc, self.pcm, samples, out, MAX_PACKET)
            if n < 0:
                raise CodecError(f"Opus encode failed ({n}) for {2 * samples} octets of PCM")
            return n
        table = &ALAW_ENC[0]
        if c.kind == KIND_PCMU:
            table = &ULAW_ENC[0]
        for i in range(samples):
            out[i] = table[<uint16_t>self.pcm[i]]
        return samples

    # -- RtpSender.next_packet + Leg.send for the payload in self.out[12:12 + plen]
    cdef int _send(self, object leg, object sender, object pt_obj, int plen,
                   object samples) except -1:
        cdef int pt = pt_obj
        remote = leg.remote
        if remote is None or not leg.sending:
            # On hold: Leg.send gives the packet's number back; the Python way.
            payload = PyBytes_FromStringAndSize(<char *>self.out + 12, plen)
            leg.send(sender.next_packet(pt_obj, payload, samples))
            return 0
        cdef uint32_t seq = sender.sequence
        cdef uint32_t ts = sender.timestamp
        cdef uint32_t ssrc = sender.ssrc
        cdef unsigned char *h = self.out
        h[0] = 0x80
        h[1] = pt & 0x7F
        h[2] = (seq >> 8) & 0xFF
        h[3] = seq & 0xFF
        h[4] = (ts >> 24) & 0xFF
        h[5] = (ts >> 16) & 0xFF
        h[6] = (ts >> 8) & 0xFF
        h[7] = ts & 0xFF
        h[8] = (ssrc >> 24) & 0xFF
        h[9] = (ssrc >> 16) & 0xFF
        h[10] = (ssrc >> 8) & 0xFF
        h[11] = ssrc & 0xFF
        sender.sequence = (seq + 1) & 0xFFFF
        sender.timestamp = (ts + <uint32_t>(<long>samples)) & 0xFFFFFFFF
        sender.last_timestamp = ts
        sender.packets += 1
        sender.octets += plen
        cdef int length = plen + 12
        cdef int status
        srtp = leg.srtp
        if srtp is not None:
            if type(srtp) is Srtp and length <= BUFFER - RTP_TRAILER:
                status = (<Srtp>srtp).api.protect((<Srtp>srtp)._tx, self.out, &length)
                if status != srtp_err_status_ok:
                    raise SrtpError(f"SRTP protect failed: {_error_text(status)}")
            else:
                data = srtp.protect(PyBytes_FromStringAndSize(<char *>self.out, length))
                leg.sock.sendto(data, remote)
                leg.tx_packets += 1
                return 0
        sock = leg.sock
        cdef _Addr dest
        if type(sock) is RtpSocket:
            dest = self.wa_remote if leg is self.wa else self.pbx_remote
            if remote is not dest.key:
                dest.parse(remote, sock.sock.family)
            if dest.ok:
                if sock._closed or sendto(sock._fd, self.out, length, MSG_DONTWAIT,
                                          <sockaddr *>&dest.sa, dest.length) < 0:
                    sock.dropped_sends += 1
                leg.tx_packets += 1
                return 0
        sock.sendto(PyBytes_FromStringAndSize(<char *>self.out, length), remote)
        leg.tx_packets += 1
        return 0


cdef int _received(object rx, uint16_t seq, uint32_t ts, double now) except -1:
    """ReceiveStats.received: its in-order steady state here, the rest by the method."""
    if not rx.initialised or rx.probation:
        rx.received(seq, ts, now)
        return 0
    cdef long max_seq = rx.max_seq
    cdef long udelta = (seq - max_seq) & 0xFFFF
    if udelta == 0 or udelta >= _MAX_DROPOUT:
        rx.received(seq, ts, now)
        return 0
    if seq < max_seq:
        rx.cycles += 65536
    rx.max_seq = seq
    rx.received_count += 1
    cdef double transit = now * <double>(<long>rx.clock_rate) - <double>ts
    last = rx.last_transit
    rx.last_transit = transit
    cdef double d, jitter
    if last is not None:
        d = _pymod(transit - <double>last + 2147483648.0, 4294967296.0) - 2147483648.0
        if d < 0:
            d = -d
        jitter = rx.jitter
        rx.jitter = jitter + (d - jitter) * 0.0625
    return 0


cdef class FastSide:
    """What an RtpSocket carries (``fast``): one direction of a :class:`Fast`."""

    cdef readonly Fast core
    cdef readonly int side

    def __init__(self, Fast core, int side):
        self.core = core
        self.side = side


# --------------------------------------------------------------------------- the poller


def poll_round(int epfd, dict sockets, object on_error):
    """One round of gateway.transport.rtp.MediaPoller: every ready socket gets one
    datagram, handed to its call's fast path (or its handler), as ``_ready`` does."""
    cdef epoll_event events[POLL_EVENTS]
    cdef unsigned char buf[RECV_SIZE]
    cdef sockaddr_storage ss
    cdef socklen_t salen
    cdef ssize_t got
    cdef int count = epoll_wait(epfd, events, POLL_EVENTS, 0)
    cdef int i, k
    cdef int64_t start, spent
    cdef bint sample
    for i in range(count):
        rtp = sockets.get(events[i].data.fd)
        if rtp is None:
            continue  # closed by a packet handled earlier in this round
        salen = sizeof(ss)
        got = recvfrom(events[i].data.fd, buf, RECV_SIZE, MSG_DONTWAIT, <sockaddr *>&ss, &salen)
        if got < 0:
            continue  # EAGAIN after all, or an ICMP error surfacing: nothing to do
        handler = rtp.handler
        if handler is None:
            continue
        timing = rtp.timing
        sample = False
        if timing is not None:
            if timing.skip:
                timing.skip -= 1
            else:
                timing.skip = FRAME_SAMPLE - 1
                sample = True
                start = _ns()
        fast = rtp.fast
        try:
            if type(fast) is FastSide:
                (<FastSide>fast).core.take((<FastSide>fast).side, buf, got, &ss)
            else:
                handler(PyBytes_FromStringAndSize(<char *>buf, got), _address(&ss))
        except Exception:
            on_error(rtp.port)
        if sample:
            spent = _ns() - start
            bounds = timing.bounds
            k = 0
            while k < len(bounds) and bounds[k] < spent:
                k += 1
            counts = timing.counts
            counts[k] += 1
            timing.sum_ns += spent
