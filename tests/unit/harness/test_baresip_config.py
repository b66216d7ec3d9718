"""What tests/peers/baresip.py writes for each media mode, and how it reads
baresip's SIP trace back (no baresip process here)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from tests.peers import LOOPBACK
from tests.peers.baresip import Baresip, host_ice_addresses


def _written(phone: Baresip) -> tuple[list[str], str]:
    phone.write_config()
    return (phone.dir / "config").read_text().splitlines(), (phone.dir / "accounts").read_text()


def _modules(config: list[str]) -> list[str]:
    return [line.split()[1] for line in config if line.split()[:1] == ["module"]]


def test_default_tls_phone_stays_sdes_without_ice(tmp_path: Path) -> None:
    config, account = _written(Baresip(tmp_path, user="wa", tls=True))
    assert "mediaenc=srtp-mand" in account
    assert "medianat" not in account and "dtls_srtp" not in account
    assert not {"ice.so", "dtls_srtp.so"} & set(_modules(config))
    assert not any(line.startswith("rtcp_mux") for line in config)


def test_dtls_mode_loads_ice_and_dtls_srtp_before_the_account(tmp_path: Path) -> None:
    phone = Baresip(tmp_path, user="wa", tls=True, media="dtls")
    config, account = _written(phone)
    aor, _, rest = account.strip().partition(">;")
    params = rest.split(";")
    assert aor == f"<sip:wa@{LOOPBACK};transport=tls"
    assert "mediaenc=dtls_srtp" in params and "medianat=ice" in params
    assert "mediaenc=srtp-mand" not in params and "audio_codecs=opus/48000/1" in params
    assert {"ice.so", "dtls_srtp.so", "opus.so"} <= set(_modules(config))
    first_tmp = next(i for i, line in enumerate(config) if line.startswith("module_tmp"))
    assert all(config.index(f"module\t\t\t{m}") < first_tmp for m in ("ice.so", "dtls_srtp.so"))
    assert "rtcp_mux\t\tyes" in config


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"media": "dtls", "srtp": True}, "leave srtp unset"),
        ({"media": "zrtp"}, "media must be one of"),
    ],
)
def test_bad_media_options_are_refused(
    tmp_path: Path, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Baresip(tmp_path, **kwargs)  # type: ignore[arg-type]


def test_traced_sip_reads_messages_with_their_crlfs(tmp_path: Path) -> None:
    phone = Baresip(tmp_path, user="wa", sip_trace=True)
    invite = "INVITE sip:b@127.0.0.1 SIP/2.0\r\nContent-Length: 9\r\n\r\nv=0\r\ns=-\r\n"
    ok = "SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n"
    tmp_path.mkdir(exist_ok=True)
    phone.log_path.write_bytes(
        (
            "call: connecting\n"
            f"\x1b[36;1m#\nTLS 127.0.0.1:4 -> 127.0.0.1:5\n{invite}\x1b[;m\n"
            "ice: something\n"
            f"\x1b[36;1m#\nTLS 127.0.0.1:5 -> 127.0.0.1:4\n{ok}\x1b[;m\n"
        ).encode()
    )
    first, second = phone.traced_sip()
    assert (first.transport, first.source, first.destination) == (
        "TLS",
        "127.0.0.1:4",
        "127.0.0.1:5",
    )
    assert first.first_line == "INVITE sip:b@127.0.0.1 SIP/2.0"
    assert first.body == "v=0\r\ns=-\r\n"
    assert second.first_line == "SIP/2.0 200 OK" and second.body == ""


def test_host_ice_addresses_are_ipv4_and_never_127_0_0_1() -> None:
    found = host_ice_addresses()
    assert LOOPBACK not in found
    for address in found:
        parsed = ipaddress.IPv4Address(address)
        assert not parsed.is_link_local
