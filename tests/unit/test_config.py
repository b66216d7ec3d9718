"""Tests for gateway.config."""

from __future__ import annotations

import os
import textwrap
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path

import pytest

from gateway import __version__
from gateway.config import (
    META_NETWORKS,
    Config,
    ConfigError,
    HostPort,
    check_files,
    load_config,
    parse_hostport,
    summary,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config" / "gateway.example.yaml"

MINIMAL = """\
whatsapp:
  hostname: sip.example.com
  tls: {cert_file: tls/gw.crt, key_file: tls/gw.key}
  numbers:
    - {number: "+15550001111", sip_password_env: WA_TEST_PW}
"""


def write(tmp_path: Path, text: str, name: str = "gateway.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value.problems


def keys_of(problems: list[str]) -> list[str]:
    return [p.split(": ", 1)[0] for p in problems]


# --------------------------------------------------------------------------- loading


def test_example_config_loads() -> None:
    cfg = load_config(EXAMPLE)
    assert cfg.mode == "development"
    assert cfg.whatsapp.listen == HostPort("127.0.0.1", 5061)
    assert cfg.whatsapp.hostname == "sip.example.com"
    assert cfg.whatsapp.tls.cert_file == ROOT / "run" / "tls" / "gateway.crt"
    assert cfg.whatsapp.tls.key_file == ROOT / "run" / "tls" / "gateway.key"
    assert cfg.whatsapp.allowed_networks == (ip_network("127.0.0.0/8"), ip_network("::1/128"))
    [number] = cfg.whatsapp.numbers
    assert number.number == "+15550001111"
    assert number.sip_password_file == ROOT / "run" / "secrets" / "15550001111.password"
    assert cfg.pbx.address == HostPort("127.0.0.1", 5080)
    assert cfg.pbx.transport == "udp"
    assert cfg.logging.format == "console"
    assert cfg.media.port_range == (20000, 29999)


def test_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL))
    assert cfg.mode == "production"
    wa = cfg.whatsapp
    assert wa.listen == HostPort("0.0.0.0", 5061)
    assert (wa.listen.host, wa.listen.port) == ("0.0.0.0", 5061)
    assert str(wa.listen) == "0.0.0.0:5061"
    assert wa.meta_proxy == HostPort("wa.meta.vc", 5061)
    assert wa.tls.ca_file is None
    assert wa.request_uri_user_params == ""
    assert wa.allowed_networks == tuple(ip_network(n) for n in META_NETWORKS)
    assert ip_network("2a03:2880::/32") in wa.allowed_networks
    assert len(wa.allowed_networks) == 24
    assert cfg.pbx.address == HostPort("127.0.0.1", 5080)
    assert cfg.pbx.transport == "udp"
    assert cfg.pbx.listen == HostPort("127.0.0.1", 5090)
    assert cfg.pbx.trusted_networks == (IPv4Network("127.0.0.0/8"), IPv6Network("::1/128"))
    assert cfg.pbx.probe_interval == 30.0
    assert cfg.media.address == "127.0.0.1"
    assert cfg.media.advertise_address is None
    assert cfg.media.sdp_address == "127.0.0.1"
    assert cfg.media.port_range == (20000, 29999)
    assert cfg.http.listen == HostPort("127.0.0.1", 9465)
    assert cfg.logging.level == "info"
    assert cfg.logging.format == "json"
    assert cfg.limits.max_calls == 200
    assert cfg.sip.user_agent == f"wa-sip-gateway/{__version__}"
    assert cfg.sip.max_message_size == 65535
    assert cfg.sip.advertise is None
    assert cfg.sip_advertise == cfg.pbx.listen
    assert not cfg.development


def test_config_is_frozen(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL))
    with pytest.raises(ValueError):
        cfg.mode = "development"
    assert hash(cfg) == hash(cfg)


def test_relative_paths_resolved_against_config_dir(tmp_path: Path) -> None:
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    path = write(
        conf_dir,
        """\
        whatsapp:
          hostname: sip.example.com
          tls: {cert_file: tls/gw.crt, key_file: ../keys/gw.key, ca_file: /abs/ca.pem}
          numbers:
            - {number: "+15550001111", sip_password_file: secrets/pw}
        """,
    )
    cfg = load_config(path)
    tls = cfg.whatsapp.tls
    assert tls.cert_file == conf_dir / "tls" / "gw.crt"
    assert tls.key_file == tmp_path / "keys" / "gw.key"
    assert tls.ca_file == Path("/abs/ca.pem")
    assert cfg.whatsapp.numbers[0].sip_password_file == conf_dir / "secrets" / "pw"
    assert all(p.is_absolute() for p in (tls.cert_file, tls.key_file))


def test_relative_config_path_uses_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, MINIMAL)
    monkeypatch.chdir(tmp_path)
    cfg = load_config("gateway.yaml")
    assert cfg.whatsapp.tls.cert_file == tmp_path / "tls" / "gw.crt"


def test_values_are_normalised(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        MINIMAL
        + """\
  listen: "[::0]:5061"
  allowed_networks: ["10.0.0.0/8", "2001:DB8::/32"]
pbx: {address: "PBX.Example.COM:5060", listen: "[::1]:5090"}
logging: {level: WARNING}
media: {address: "0.0.0.0", advertise_address: "192.0.2.1"}
""",
    )
    cfg = load_config(path)
    assert cfg.whatsapp.listen == HostPort("::", 5061)
    assert str(cfg.whatsapp.listen) == "[::]:5061"
    assert cfg.whatsapp.allowed_networks[1] == IPv6Network("2001:db8::/32")
    assert cfg.pbx.address == HostPort("pbx.example.com", 5060)
    assert cfg.logging.level == "warning"
    assert cfg.media.sdp_address == "192.0.2.1"


def test_sections_left_empty_take_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL + "sip:\nmedia:\n"))
    assert cfg.sip.max_message_size == 65535


# --------------------------------------------------------------------------- broken configs

BROKEN: list[tuple[str, str, str]] = [
    ("bad port", 'pbx: {address: "127.0.0.1:70000"}', "pbx.address"),
    ("port missing", 'http: {listen: "127.0.0.1"}', "http.listen"),
    ("bare v6", 'pbx: {listen: "::1:5090"}', "pbx.listen"),
    ("bad host", 'pbx: {address: "bad_host:5060"}', "pbx.address"),
    ("bad transport", "pbx: {transport: tls}", "pbx.transport"),
    (
        "bad CIDR",
        'pbx: {trusted_networks: ["10.0.0.0/8", "::1/128", "127.0.0.0/8", "10.1.2.3/8"]}',
        "pbx.trusted_networks.3",
    ),
    ("empty networks", "pbx: {trusted_networks: []}", "pbx.trusted_networks"),
    ("unknown key", "pbx: {adress: 127.0.0.1:5080}", "pbx.adress"),
    ("unknown top", "limit: {max_calls: 3}", "limit"),
    ("max_calls 0", "limits: {max_calls: 0}", "limits.max_calls"),
    ("max_calls str", 'limits: {max_calls: "10"}', "limits.max_calls"),
    ("probe", "pbx: {probe_interval: -1}", "pbx.probe_interval"),
    ("level", "logging: {level: verbose}", "logging.level"),
    ("format", "logging: {format: text}", "logging.format"),
    ("mode", "mode: staging", "mode"),
    ("odd low", "media: {port_range: [20001, 29999]}", "media.port_range"),
    ("low >= high", "media: {port_range: [30000, 29998]}", "media.port_range"),
    ("low < 1024", "media: {port_range: [1000, 2000]}", "media.port_range"),
    ("high > 65535", "media: {port_range: [20000, 70000]}", "media.port_range"),
    ("three ports", "media: {port_range: [20000, 20002, 20004]}", "media.port_range"),
    ("bad media ip", "media: {address: localhost}", "media.address"),
    ("wildcard media", 'media: {address: "0.0.0.0"}', "media.advertise_address"),
    ("wildcard pbx", 'pbx: {listen: "0.0.0.0:5090"}', "sip.advertise"),
    ("user agent", 'sip: {user_agent: "a\\r\\nX: y"}', "sip.user_agent"),
    ("max msg", "sip: {max_message_size: 100}", "sip.max_message_size"),
    ("sip advertise", 'sip: {advertise: "x_y:1"}', "sip.advertise"),
    ("section list", "pbx: [1, 2]", "pbx"),
]


@pytest.mark.parametrize(
    ("snippet", "key"), [(s, k) for _, s, k in BROKEN], ids=[n for n, _, _ in BROKEN]
)
def test_broken_section(tmp_path: Path, snippet: str, key: str) -> None:
    problems = problems_of(write(tmp_path, MINIMAL + snippet + "\n"))
    assert keys_of(problems) == [key], problems


def _whatsapp(
    extra: str = "", numbers: str | None = None, hostname: str = "sip.example.com"
) -> str:
    numbers = numbers or '    - {number: "+15550001111", sip_password_env: A}\n'
    host = f"  hostname: {hostname}\n" if hostname else ""
    return (
        "whatsapp:\n"
        + host
        + "  tls: {cert_file: c, key_file: k}\n"
        + "  numbers:\n"
        + numbers
        + extra
    )


BROKEN_WHATSAPP: list[tuple[str, str, list[str]]] = [
    ("missing hostname", _whatsapp(hostname=""), ["whatsapp.hostname"]),
    ("ip hostname", _whatsapp(hostname="192.0.2.1"), ["whatsapp.hostname"]),
    ("bad hostname", _whatsapp(hostname="-bad-.example.com"), ["whatsapp.hostname"]),
    ("bad listen", _whatsapp('  listen: "0.0.0.0:0"\n'), ["whatsapp.listen"]),
    ("bad meta_proxy", _whatsapp('  meta_proxy: "wa.meta.vc:"\n'), ["whatsapp.meta_proxy"]),
    (
        "bad CIDR at index",
        _whatsapp('  allowed_networks: ["10.0.0.0/8", "1.2.3.0/24", "::/0", "300.0.0.0/8"]\n'),
        ["whatsapp.allowed_networks.3"],
    ),
    (
        "bad E.164",
        _whatsapp(numbers='    - {number: "15550001111", sip_password_env: A}\n'),
        ["whatsapp.numbers.0.number"],
    ),
    (
        "short E.164",
        _whatsapp(numbers='    - {number: "+1555", sip_password_env: A}\n'),
        ["whatsapp.numbers.0.number"],
    ),
    (
        "unquoted E.164",
        _whatsapp(numbers="    - {number: +15550001111, sip_password_env: A}\n"),
        ["whatsapp.numbers.0.number"],
    ),
    (
        "both password sources",
        _whatsapp(
            numbers='    - {number: "+15550001111", sip_password_env: A}\n'
            '    - {number: "+15550001112", sip_password_env: A, sip_password_file: f}\n'
        ),
        ["whatsapp.numbers.1"],
    ),
    (
        "neither password source",
        _whatsapp(numbers='    - {number: "+15550001111"}\n'),
        ["whatsapp.numbers.0"],
    ),
    (
        "bad env name",
        _whatsapp(numbers='    - {number: "+15550001111", sip_password_env: "1-A"}\n'),
        ["whatsapp.numbers.0.sip_password_env"],
    ),
    (
        "duplicate numbers",
        _whatsapp(
            numbers='    - {number: "+15550001111", sip_password_env: A}\n'
            '    - {number: "+15550001112", sip_password_env: B}\n'
            '    - {number: "+15550001111", sip_password_env: C}\n'
        ),
        ["whatsapp.numbers.2.number"],
    ),
    ("no numbers", _whatsapp(numbers="    []\n"), ["whatsapp.numbers"]),
    (
        "unknown number key",
        _whatsapp(numbers='    - {number: "+15550001111", sip_password_env: A, realm: x}\n'),
        ["whatsapp.numbers.0.realm"],
    ),
    (
        "missing tls key",
        "whatsapp:\n  hostname: a.example\n  tls: {cert_file: c}\n"
        '  numbers: [{number: "+15550001111", sip_password_env: A}]\n',
        ["whatsapp.tls.key_file"],
    ),
    (
        "empty path",
        _whatsapp().replace("cert_file: c", 'cert_file: ""'),
        ["whatsapp.tls.cert_file"],
    ),
    (
        "uri params",
        _whatsapp("  request_uri_user_params: tgrp=x\n"),
        ["whatsapp.request_uri_user_params"],
    ),
    ("missing whatsapp", "mode: production\n", ["whatsapp"]),
    ("whatsapp null", "whatsapp:\n", ["whatsapp"]),
]


@pytest.mark.parametrize(
    ("text", "keys"),
    [(t, k) for _, t, k in BROKEN_WHATSAPP],
    ids=[n for n, _, _ in BROKEN_WHATSAPP],
)
def test_broken_whatsapp(tmp_path: Path, text: str, keys: list[str]) -> None:
    problems = problems_of(write(tmp_path, text))
    assert keys_of(problems) == keys, problems


def test_exact_messages(tmp_path: Path) -> None:
    text = _whatsapp(numbers='    - {number: "5550001111", sip_password_env: A}\n')
    problems = problems_of(write(tmp_path, text + "pbx: {transport: sctp}\n"))
    assert problems == [
        "whatsapp.numbers.0.number: must be +E.164 (a '+' and 8-15 digits)",
        "pbx.transport: must be one of udp, tcp",
    ]


def test_all_problems_reported_and_str(tmp_path: Path) -> None:
    text = MINIMAL + "pbx: {transport: x, address: y}\nlimits: {max_calls: 0}\nbogus: 1\n"
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert keys_of(info.value.problems) == [
        "pbx.address",
        "pbx.transport",
        "limits.max_calls",
        "bogus",
    ]
    assert str(info.value).splitlines() == info.value.problems
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_yaml_syntax_error_has_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "whatsapp:\n  hostname: a\n bad: [\n")
    [problem] = problems_of(path)
    assert problem.startswith(f"{path}:")
    assert "YAML syntax error" in problem
    line, column = problem[len(str(path)) + 1 :].split(":")[:2]
    assert line.isdigit() and column.isdigit()


def test_duplicate_yaml_key_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "pbx: {}\npbx: {transport: tcp}\n")
    [problem] = problems_of(path)
    assert problem.startswith(f"{path}:7:1: YAML syntax error: duplicate key 'pbx'")


def test_yaml_merge_key_may_be_overridden(tmp_path: Path) -> None:
    text = MINIMAL + "x-pbx: &pbx {transport: tcp, address: 127.0.0.1:5080}\n"
    text += "pbx:\n  <<: *pbx\n  transport: udp\n"
    assert keys_of(problems_of(write(tmp_path, text))) == ["x-pbx"]
    cfg = load_config(write(tmp_path, MINIMAL + "pbx:\n  <<: {transport: tcp}\n  transport: udp\n"))
    assert cfg.pbx.transport == "udp"


def test_non_string_key(tmp_path: Path) -> None:
    assert problems_of(write(tmp_path, MINIMAL + "pbx: {1: x}\n")) == [
        "pbx.1: keys must be strings"
    ]


@pytest.mark.parametrize(
    ("text", "expected"), [("", "file is empty"), ("# nothing\n", "file is empty")]
)
def test_empty_file(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    assert problems_of(path) == [f"{path}: {expected}"]


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    assert problems_of(path) == [f"{path}: file not found"]


def test_directory_instead_of_file(tmp_path: Path) -> None:
    [problem] = problems_of(tmp_path)
    assert problem.startswith(f"{tmp_path}: cannot read")


def test_top_level_must_be_mapping(tmp_path: Path) -> None:
    assert problems_of(write(tmp_path, "- a\n- b\n")) == ["(top level): must be a mapping of keys"]


SECRET = "hunter2-Sup3rSecret"


@pytest.mark.parametrize(
    "snippet",
    [
        f"pbx: {{address: {SECRET}}}\n",
        f"pbx: {{transport: {SECRET}}}\n",
        f"limits: {{max_calls: {SECRET}}}\n",
        f"sip_password: {SECRET}\n",
        f"media: {{port_range: {SECRET}}}\n",
        f"logging: {{level: {SECRET}}}\n",
        f"pbx: {{trusted_networks: [{SECRET}]}}\n",
    ],
)
def test_problems_never_echo_values(tmp_path: Path, snippet: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, MINIMAL + snippet))
    assert SECRET not in str(info.value)
    assert SECRET not in repr(info.value)
    assert all(SECRET not in p for p in info.value.problems)


def test_secret_in_number_entry_not_echoed(tmp_path: Path) -> None:
    text = _whatsapp(
        numbers=f'    - {{number: "+15550001111", sip_password_env: "{SECRET}"}}\n'
        f'    - {{number: "+15550001112", password: "{SECRET}"}}\n'
    )
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert keys_of(info.value.problems) == [
        "whatsapp.numbers.0.sip_password_env",
        "whatsapp.numbers.1.password",
    ]
    assert SECRET not in str(info.value)


def test_yaml_error_does_not_echo_line(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + f'  sip_password: "{SECRET}\n')
    [problem] = problems_of(path)
    assert SECRET not in problem


# --------------------------------------------------------------------------- passwords


def test_read_password_from_file(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("s3cret\n", encoding="utf-8")
    text = _whatsapp(numbers='    - {number: "+15550001111", sip_password_file: pw}\n')
    number = load_config(write(tmp_path, text)).whatsapp.numbers[0]
    assert number.read_password() == "s3cret"
    assert "s3cret" not in repr(number) and "s3cret" not in str(number)
    (tmp_path / "pw").write_text("", encoding="utf-8")
    assert number.read_password() is None
    (tmp_path / "pw").unlink()
    assert number.read_password() is None


def test_read_password_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    number = load_config(write(tmp_path, MINIMAL)).whatsapp.numbers[0]
    monkeypatch.delenv("WA_TEST_PW", raising=False)
    assert number.read_password() is None
    monkeypatch.setenv("WA_TEST_PW", "")
    assert number.read_password() is None
    monkeypatch.setenv("WA_TEST_PW", "from-env")
    assert number.read_password() == "from-env"
    assert "from-env" not in repr(number)


def test_lookup_number(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL))
    assert cfg.whatsapp.number("+15550001111") is cfg.whatsapp.numbers[0]
    assert cfg.whatsapp.number("+15550009999") is None


# --------------------------------------------------------------------------- parse_hostport


@pytest.mark.parametrize(
    ("text", "default", "expected"),
    [
        ("127.0.0.1:5060", None, ("127.0.0.1", 5060)),
        ("sip.example.com:5061", None, ("sip.example.com", 5061)),
        ("[2001:db8::1]:5061", None, ("2001:db8::1", 5061)),
        ("[::1]", 5060, ("::1", 5060)),
        ("::1", 5060, ("::1", 5060)),
        ("localhost", 5080, ("localhost", 5080)),
        ("host:1", 5080, ("host", 1)),
        ("example.com:65535", None, ("example.com", 65535)),
    ],
)
def test_parse_hostport(text: str, default: int | None, expected: tuple[str, int]) -> None:
    assert parse_hostport(text, default) == expected


@pytest.mark.parametrize(
    "text",
    [
        "127.0.0.1",
        "127.0.0.1:0",
        "127.0.0.1:65536",
        "host:abc",
        "::1:5060",
        "[::1:5060",
        "[127.0.0.1]:5060",
        "[::1]x",
        "bad_host:5060",
        "-a.example:1",
        "1.2.3.999:5",
        ":5060",
        "a..b:5",
        "host:+5",
        "host:\u0665",
    ],
)
def test_parse_hostport_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_hostport(text)


def test_hostport_str_roundtrip() -> None:
    for text in ("127.0.0.1:5060", "[2001:db8::1]:5061", "sip.example.com:5061"):
        assert str(parse_hostport(text)) == text
    host, port = parse_hostport("a.example:7")
    assert (host, port) == ("a.example", 7)


# --------------------------------------------------------------------------- summary / files


def test_summary(tmp_path: Path) -> None:
    text = MINIMAL + '    - {number: "+15550001112", sip_password_env: B}\n'
    cfg = load_config(write(tmp_path, text))
    assert summary(cfg) == (
        "config OK: 2 numbers, TLS 0.0.0.0:5061 (sip.example.com), PBX udp 127.0.0.1:5080,"
        " listen 127.0.0.1:5090, http 127.0.0.1:9465"
    )
    assert summary(load_config(EXAMPLE)).startswith("config OK: 1 number, TLS 127.0.0.1:5061")


def _files_config(tmp_path: Path, mode: str) -> Config:
    text = f"mode: {mode}\n" + _whatsapp(
        numbers='    - {number: "+15550001111", sip_password_file: pw}\n'
        '    - {number: "+15550001112", sip_password_env: WA_TEST_MISSING}\n'
    ).replace("cert_file: c, key_file: k", "cert_file: gw.crt, key_file: gw.key")
    return load_config(write(tmp_path, text))


def test_check_files_production_missing_cert(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WA_TEST_MISSING", raising=False)
    result = check_files(_files_config(tmp_path, "production"))
    assert result.errors == [
        f"whatsapp.tls.cert_file: file not found: {tmp_path / 'gw.crt'}",
        f"whatsapp.tls.key_file: file not found: {tmp_path / 'gw.key'}",
    ]
    assert not result.ok
    assert result.warnings == [
        f"whatsapp.numbers.0.sip_password_file: file not found: {tmp_path / 'pw'}",
        "whatsapp.numbers.1.sip_password_env: environment variable WA_TEST_MISSING is not set"
        " or empty",
    ]


def test_check_files_development_missing_cert_is_fine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "pw").write_text("x\n", encoding="utf-8")
    monkeypatch.delenv("WA_TEST_MISSING", raising=False)
    result = check_files(_files_config(tmp_path, "development"))
    assert result.ok
    assert keys_of(result.warnings) == ["whatsapp.numbers.1.sip_password_env"]


def test_check_files_with_generated_cert(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.config.certs import ensure_dev_certificate

    monkeypatch.setenv("WA_TEST_MISSING", "pw")
    (tmp_path / "pw").write_text("x", encoding="utf-8")
    cfg = _files_config(tmp_path, "production")
    ensure_dev_certificate(cfg.whatsapp.tls.cert_file, cfg.whatsapp.tls.key_file, "other.example")
    result = check_files(cfg)
    assert result.errors == []
    assert result.warnings == [
        "whatsapp.tls.cert_file: certificate does not cover sip.example.com"
        " (subjectAltName DNS names)"
    ]
    (tmp_path / "gw.crt").write_text("garbage", encoding="utf-8")
    assert check_files(cfg).warnings == ["whatsapp.tls.cert_file: not a readable PEM certificate"]


def test_check_files_ca_and_directory(tmp_path: Path) -> None:
    text = MINIMAL.replace("key_file: tls/gw.key", "key_file: tls/gw.key, ca_file: ca.pem")
    (tmp_path / "tls" / "gw.crt").mkdir(parents=True)
    result = check_files(load_config(write(tmp_path, "mode: development\n" + text)))
    assert keys_of(result.errors) == ["whatsapp.tls.cert_file", "whatsapp.tls.ca_file"]
    assert result.errors[0].startswith("whatsapp.tls.cert_file: not a regular file")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read everything")
def test_check_files_unreadable_password(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("x", encoding="utf-8")
    pw.chmod(0)
    result = check_files(_files_config(tmp_path, "development"))
    assert result.warnings[0] == f"whatsapp.numbers.0.sip_password_file: not readable: {pw}"


# --------------------------------------------------------------------------- behind a proxy

PROXIED = MINIMAL + """\
  listen: null
  trusted_proxies: [10.0.0.5/32]
  proxy_listen: 0.0.0.0:5071
  outbound_proxy: 10.0.0.5:5060
sip:
  advertise: 10.0.0.11:5091
cluster:
  nonce_secret_file: nonce.secret
"""


def test_behind_a_proxy(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, PROXIED))
    wa = cfg.whatsapp
    assert wa.listen is None
    assert wa.trusted_proxies == (ip_network("10.0.0.5/32"),)
    assert wa.proxy_transport == "udp"
    assert wa.outbound_proxy == HostPort("10.0.0.5", 5060)
    # A wildcard proxy_listen takes its host from sip.advertise, its own port.
    assert cfg.proxy_advertise == HostPort("10.0.0.11", 5071)
    assert wa.public_port == 5061
    assert cfg.cluster.nonce_secret_file == tmp_path / "nonce.secret"
    assert "behind proxy on 0.0.0.0:5071" in summary(cfg)
    assert "TLS off" in summary(cfg)


@pytest.mark.parametrize(
    ("whatsapp", "key", "words"),
    [
        ("  proxy_listen: 127.0.0.1:5071\n", "whatsapp.trusted_proxies", "proxy_listen"),
        ("  trusted_proxies: [127.0.0.1/32]\n", "whatsapp.proxy_listen", "trusted_proxies"),
        ("  listen: null\n", "whatsapp.listen", "behind a proxy"),
        ("  outbound_proxy: 127.0.0.1:5060\n", "whatsapp.proxy_listen", "outbound_proxy"),
        ("  trusted_proxies: [10.0.0.1]\n  proxy_listen: 0.0.0.0:5071\n", "sip.advertise",
         "proxy_listen is a wildcard"),
        ("  trusted_proxies: [10.0.0.0/33]\n  proxy_listen: 127.0.0.1:5071\n",
         "whatsapp.trusted_proxies.0", "CIDR"),
        ("  proxy_transport: tls\n", "whatsapp.proxy_transport", "udp, tcp"),
    ],
)  # fmt: skip
def test_proxy_settings_name_the_key(tmp_path: Path, whatsapp: str, key: str, words: str) -> None:
    [problem] = problems_of(write(tmp_path, MINIMAL + whatsapp))
    assert problem.startswith(f"{key}: "), problem
    assert words in problem


def test_overlay_merges_over_the_base(tmp_path: Path) -> None:
    base = write(tmp_path, PROXIED)
    overlay = write(tmp_path, """\
        whatsapp:
          proxy_listen: 127.0.0.1:5072
          trusted_proxies: [127.0.0.1/32]
        http: {listen: 127.0.0.1:9467}
        media: {port_range: [25000, 29999]}
        """, "instance-2.yaml")  # fmt: skip
    cfg = load_config(base, overlay)
    assert cfg.whatsapp.proxy_listen == HostPort("127.0.0.1", 5072)
    assert cfg.whatsapp.trusted_proxies == (ip_network("127.0.0.1/32"),)  # lists replaced
    assert cfg.whatsapp.hostname == "sip.example.com"  # the rest of the mapping kept
    assert cfg.whatsapp.outbound_proxy == HostPort("10.0.0.5", 5060)
    assert cfg.http.listen == HostPort("127.0.0.1", 9467)
    assert cfg.media.port_range == (25000, 29999)
    # A problem the overlay makes is named by its key; a broken overlay by its file.
    bad = write(tmp_path, "media: {port_range: [25001, 29999]}\n", "bad.yaml")
    assert keys_of(problems_of_all(base, bad)) == ["media.port_range"]
    listed = write(tmp_path, "- 1\n", "list.yaml")
    assert problems_of_all(base, listed) == [f"{listed}: must be a mapping of keys (top level)"]


def problems_of_all(*paths: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(*paths)
    return info.value.problems


def test_nonce_secret_file_is_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WA_TEST_PW", "pw")
    cfg = load_config(write(tmp_path, PROXIED))
    assert cfg.cluster.read_nonce_secret() is None
    assert "cluster.nonce_secret_file: file not found" in "\n".join(check_files(cfg).errors)
    (tmp_path / "nonce.secret").write_text("short\n")
    assert "cluster.nonce_secret_file: shorter than 16 bytes" in check_files(cfg).errors
    secret = "0123456789abcdef0123456789abcdef"
    (tmp_path / "nonce.secret").write_text(secret + "\n")
    assert cfg.cluster.read_nonce_secret() == secret.encode()
    assert not [e for e in check_files(cfg).errors if e.startswith("cluster.")]
    assert secret not in repr(cfg)  # the config holds the path, never the secret


def test_tls_may_be_left_out_only_without_a_tls_listener(tmp_path: Path) -> None:
    no_tls = PROXIED.replace("  tls: {cert_file: tls/gw.crt, key_file: tls/gw.key}\n", "")
    cfg = load_config(write(tmp_path, no_tls))
    assert cfg.whatsapp.tls is None
    assert not [e for e in check_files(cfg).errors if e.startswith("whatsapp.tls")]
    with_listener = no_tls.replace("  listen: null\n", "")
    assert problems_of(write(tmp_path, with_listener)) == [
        "whatsapp.tls: required (cert_file, key_file) unless listen is null"
    ]


def test_no_outbound_proxy_without_a_tls_listener_is_warned(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, PROXIED.replace("  outbound_proxy: 10.0.0.5:5060\n", "")))
    [warning] = [w for w in check_files(cfg).warnings if w.startswith("whatsapp.outbound_proxy")]
    assert "Meta's in-dialog requests for them cannot arrive" in warning
    assert not [w for w in check_files(load_config(write(tmp_path, PROXIED))).warnings
                if w.startswith("whatsapp.outbound_proxy")]  # fmt: skip
