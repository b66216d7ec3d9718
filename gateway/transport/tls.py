"""TLS contexts for the WhatsApp leg (docs/whatsapp-sip.md section 2).

Server: TLS 1.2 minimum, never requests a client certificate (Meta shows a
certificate for a random host when asked), offers no ALPN. Client: verifies
Meta's certificate and host name against ``ca_file`` or the system roots,
sends SNI (asyncio passes ``server_hostname``), offers no ALPN (Meta aborts the
handshake with alert 120 when ALPN ``sip`` is offered).
"""

from __future__ import annotations

import ssl
from pathlib import Path


def server_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_NONE  # no client certificate request, ever
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.load_cert_chain(str(cert_file), str(key_file))
    return ctx


def client_context(ca_file: Path | None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    if ca_file is not None:
        ctx.load_verify_locations(cafile=str(ca_file))
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    return ctx
