"""WhatsApp (Meta) side emulator for the gateway's integration tests.

See :mod:`tests.emulator.meta` for the behaviour it enforces.
"""

from tests.emulator.meta import (
    META_WARNINGS,
    CallResult,
    DtmfEvent,
    MediaScript,
    MetaCaller,
    MetaServer,
    SipRecord,
    UasBehaviour,
    measure_tone,
)
from tests.emulator.tlsutil import EmulatorTls, default_tls

__all__ = [
    "META_WARNINGS",
    "CallResult",
    "DtmfEvent",
    "EmulatorTls",
    "MediaScript",
    "MetaCaller",
    "MetaServer",
    "SipRecord",
    "UasBehaviour",
    "default_tls",
    "measure_tone",
]
