"""Static check of the shipped FreeSWITCH configuration (config/freeswitch).

No FreeSWITCH needed: every file parses as XML, the document FreeSWITCH's
preprocessor would build from freeswitch.xml parses and leaves no $${variable}
unset, `frslint analyze` (regexes, preprocessor variables, applications) finds
nothing, the profile has what the gateway link needs, and the dialplan is
evaluated here the way mod_dialplan_xml hunts (conditions, break, inline set,
$1 captures) on the number forms the gateway documents. frslint's own dialplan
evaluator (`frslint debug`) is not used: it does not expand preprocessor
variables in expressions, substitute captures or run inline actions
(docs/decisions.md, "FreeSWITCH configuration").
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gateway.b2bua import mapping

PROJECT = Path(__file__).resolve().parents[3]
CONF = PROJECT / "config" / "freeswitch"
TEST_DIALPLAN = PROJECT / "tests" / "peers" / "freeswitch" / "wagw-tests.xml"
BUILD_SCRIPT = PROJECT / "scripts" / "build-freeswitch.sh"

_PRE = re.compile(r'<X-PRE-PROCESS\s+cmd="(?P<cmd>[a-z]+)"\s+data="(?P<data>[^"]*)"\s*/>')
_PREVAR = re.compile(r"\$\$\{([A-Za-z0-9_]+)\}")
_RUNVAR = re.compile(r"(?<!\$)\$\{([A-Za-z0-9_-]+)\}")


# -- FreeSWITCH's preprocessor, the parts the shipped files use ----------------------
@dataclass
class Preprocessed:
    text: str
    variables: dict[str, str] = field(default_factory=dict)
    unresolved: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)


def _expand_pre(line: str, out: Preprocessed) -> str:
    def sub(m: re.Match[str]) -> str:
        if m.group(1) in out.variables:
            return out.variables[m.group(1)]
        out.unresolved.append(m.group(1))
        return m.group(0)

    return _PREVAR.sub(sub, line)


def _preprocess_file(path: Path, out: Preprocessed, lines: list[str]) -> None:
    out.files.append(path)
    for raw in path.read_text().splitlines():
        if raw.strip() in ("<include>", "</include>") and path.name != "freeswitch.xml":
            continue
        m = _PRE.search(raw)
        if m is None:
            lines.append(_expand_pre(raw, out))
            continue
        data = _expand_pre(m["data"], out)
        if m["cmd"] == "set":
            name, _, value = data.partition("=")
            out.variables[name] = value
        elif m["cmd"] == "include":
            for inc in sorted(path.parent.glob(data)):
                _preprocess_file(inc.resolve(), out, lines)
        else:
            raise AssertionError(f"{path}: unexpected X-PRE-PROCESS cmd {m['cmd']}")


def preprocess(root: Path = CONF / "freeswitch.xml") -> Preprocessed:
    out = Preprocessed("")
    lines: list[str] = []
    _preprocess_file(root, out, lines)
    out.text = "\n".join(lines)
    return out


@pytest.fixture(scope="module")
def pre() -> Preprocessed:
    return preprocess()


@pytest.fixture(scope="module")
def doc(pre: Preprocessed) -> ET.Element:
    return ET.fromstring(pre.text)


def _section(doc: ET.Element, name: str) -> ET.Element:
    found = doc.find(f"section[@name='{name}']")
    assert found is not None, name
    return found


def _configuration(doc: ET.Element, name: str) -> ET.Element:
    found = _section(doc, "configuration").find(f"configuration[@name='{name}']")
    assert found is not None, name
    return found


def _profile(doc: ET.Element) -> ET.Element:
    found = _configuration(doc, "sofia.conf").find("profiles/profile[@name='wagw']")
    assert found is not None
    return found


def _params(elem: ET.Element) -> dict[str, str]:
    return {p.get("name", ""): p.get("value", "") for p in elem.findall("param")}


# -- the files ------------------------------------------------------------------------
def test_every_file_is_well_formed_xml() -> None:
    files = [*sorted(CONF.rglob("*.xml")), TEST_DIALPLAN]
    assert len(files) >= 10
    for path in files:
        ET.parse(path)  # raises on a syntax error


def test_the_preprocessed_document_parses_with_every_variable_set(
    pre: Preprocessed, doc: ET.Element
) -> None:
    assert pre.unresolved == []
    included = {p.relative_to(CONF).as_posix() for p in pre.files}
    assert {
        "vars.xml",
        "sip_profiles/wagw.xml",
        "dialplan/from-whatsapp.xml",
        "dialplan/to-whatsapp.xml",
        "autoload_configs/acl.conf.xml",
    } <= included
    assert doc.tag == "document"
    # every runtime ${wagw_*} the files use is one of vars.xml's globals
    used = set(_RUNVAR.findall(pre.text))
    assert {u for u in used if u.startswith("wagw_")} <= set(pre.variables)


def _frslint() -> str:
    """frslint from the test extras, beside this interpreter (never the host's PATH)."""
    exe = Path(sys.executable).with_name("frslint")
    if not exe.exists():
        pytest.fail("frslint not installed: it is in the test extras (pip install -e '.[test]')")
    return str(exe)


def test_frslint_analyze_finds_nothing() -> None:
    res = subprocess.run(
        [_frslint(), "analyze", str(CONF / "freeswitch.xml"), "-f", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    report = json.loads(res.stdout)
    assert report["issues"] == [], json.dumps(report["issues"], indent=1)
    assert res.returncode == 0


def test_frslint_catches_what_it_is_trusted_with(tmp_path: Path) -> None:
    """The analyzer can fail: a broken regex, an unset $${variable} and a misspelt
    application in a copy of the configuration are each reported."""
    copy = tmp_path / "conf"
    shutil.copytree(CONF, copy)
    plan = copy / "dialplan" / "from-whatsapp.xml"
    text = plan.read_text()
    text = text.replace('expression="^ivr$"', 'expression="^ivr($"')
    text = text.replace("$${wagw_numbers}", "$${wagw_numberz}")
    text = text.replace('application="answer"/>', 'application="answr"/>', 1)
    plan.write_text(text)
    res = subprocess.run(
        [_frslint(), "analyze", str(copy / "freeswitch.xml"), "-f", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    kinds = {i["type"] for i in json.loads(res.stdout)["issues"]}
    assert {"invalid-regex", "undefined-variable", "unknown-application"} <= kinds
    assert res.returncode == 1


# -- the link to the gateway ------------------------------------------------------------
def test_the_profile_is_what_the_gateway_link_needs(doc: ET.Element, pre: Preprocessed) -> None:
    profile = _profile(doc)
    p = _params(profile.find("settings"))  # type: ignore[arg-type]
    assert p["enable-timer"] == "false"  # no session timers on this link
    assert p["dtmf-type"] == "rfc2833" and p["rfc2833-pt"] == "101"
    assert p["inbound-codec-prefs"] == p["outbound-codec-prefs"] == "PCMU,PCMA"
    assert p["disable-register"] == "true" and p["auth-calls"] == "true"
    assert p["sip-port"] == pre.variables["wagw_fs_port"]
    # the trusted ACL exists and holds the gateway's address
    acl = _configuration(doc, "acl.conf").find(
        f"network-lists/list[@name='{p['apply-inbound-acl']}']"
    )
    assert acl is not None and acl.get("default") == "deny"
    nodes = [(n.get("type"), n.get("cidr")) for n in acl.findall("node")]
    assert nodes == [("allow", f"{pre.variables['wagw_gateway_ip']}/32")]
    # calls land in a context that exists
    contexts = {c.get("name") for c in _section(doc, "dialplan").findall("context")}
    assert p["context"] in contexts
    gw = profile.find("gateways/gateway[@name='whatsapp']")
    assert gw is not None
    g = _params(gw)
    assert g["register"] == "false"
    assert g["proxy"] == f"{pre.variables['wagw_gateway_ip']}:{pre.variables['wagw_gateway_port']}"
    assert g["register-transport"] in ("udp", "tcp")


def test_the_modules_are_the_ones_the_build_script_builds(doc: ET.Element) -> None:
    loaded = {m.get("module") for m in _configuration(doc, "modules.conf").iter("load")}
    script = BUILD_SCRIPT.read_text()
    block = re.search(r'MODULES="([^"]*)"', script)
    assert block is not None
    built = {line.rsplit("/", 1)[1] for line in block.group(1).split()}
    assert loaded == built
    assert "mod_verto" not in built and "mod_signalwire" not in built


# -- the dialplan, hunted the way mod_dialplan_xml does -------------------------------
@dataclass
class Hunt:
    actions: list[tuple[str, str]]
    variables: dict[str, str]

    def expand(self, data: str) -> str:
        return _RUNVAR.sub(lambda m: self.variables.get(m.group(1), ""), data)

    def first(self, app: str) -> str | None:
        for a, data in self.actions:
            if a == app:
                return self.expand(data)
        return None


def _field_value(fld: str, variables: dict[str, str]) -> str:
    if fld.startswith("$"):
        return _RUNVAR.sub(lambda m: variables.get(m.group(1), ""), fld)
    return variables.get(fld, "")


def _substitute(data: str, m: re.Match[str]) -> str:
    return re.sub(r"\$(\d)", lambda g: m.group(int(g.group(1))) or "", data)


def hunt(doc: ET.Element, context: str, dest: str, **variables: str) -> Hunt:
    """The actions the XML dialplan collects for `dest` in `context` (FreeSWITCH's
    hunt: extensions in order, conditions with break on-false/on-true/never,
    inline actions run at once, $N from the condition's own regex)."""
    ctx = _section(doc, "dialplan").find(f"context[@name='{context}']")
    assert ctx is not None, context
    state = {**preprocess().variables, **variables, "destination_number": dest}
    actions: list[tuple[str, str]] = []
    for ext in ctx.findall("extension"):
        proceed = False
        for cond in ext.findall("condition"):
            value = _field_value(cond.get("field", ""), state)
            m = re.search(cond.get("expression", ""), value)
            proceed = m is not None
            if m is not None:
                for act in cond.findall("action"):
                    app, data = act.get("application", ""), _substitute(act.get("data", ""), m)
                    if act.get("inline") == "true":
                        assert app == "set", app
                        name, _, val = data.partition("=")
                        state[name] = _field_value(val, state) if "${" in val else val
                    else:
                        actions.append((app, data))
            brk = cond.get("break", "on-false")
            if brk == "always" or ((brk == "on-true") == proceed and brk != "never"):
                break
        if proceed and ext.get("continue") != "true":
            break
    return Hunt(actions, state)


BUSINESS = "+15550001111"


@pytest.mark.parametrize("dest", [BUSINESS, BUSINESS[1:]])
def test_a_call_for_the_business_number_reaches_the_ivr(doc: ET.Element, dest: str) -> None:
    h = hunt(
        doc,
        "from-whatsapp",
        dest,
        **{"sip_h_X-WA-Call-ID": "wacid.X1", "sip_h_X-WA-User": "+12195550714"},
    )
    assert h.first("transfer") == "ivr XML wa-routes"
    assert h.variables["wa_business_number"] == BUSINESS
    assert h.variables["wa_call_id"] == "wacid.X1" and h.variables["wa_user"] == "+12195550714"
    log = h.first("log")
    assert log is not None and log.startswith("NOTICE WAGW-CALL ")
    assert "wacid=wacid.X1 user=+12195550714 " in log and log.endswith(f"business={BUSINESS}")


@pytest.mark.parametrize("dest", ["+15559999999", "5550001111", "+155500011112", "sales", ""])
def test_other_numbers_find_no_route(doc: ET.Element, dest: str) -> None:
    assert hunt(doc, "from-whatsapp", dest).actions == []


@pytest.mark.parametrize(
    ("headers", "target"),
    [
        ({"sip_h_X-WA-CTA-Payload": "sales"}, "sales XML wa-routes"),
        ({"sip_h_X-WA-Deeplink-Payload": "sales"}, "sales XML wa-routes"),
        ({"sip_h_X-WA-CTA-Payload": "salesforce"}, "ivr XML wa-routes"),
        ({"sip_h_X-WA-CTA-Payload": "test:tone"}, "ivr XML wa-routes"),  # routing off
        (
            {"sip_h_X-WA-CTA-Payload": "test:tone", "wagw_test_routing": "yes"},
            "tone XML wagw-tests",
        ),
    ],
)
def test_the_whatsapp_context_routes(doc: ET.Element, headers: dict[str, str], target: str) -> None:
    assert hunt(doc, "from-whatsapp", BUSINESS, **headers).first("transfer") == target


def test_the_ivr_menu(doc: ET.Element) -> None:
    ivr = hunt(doc, "wa-routes", "ivr")
    pagd = ivr.first("play_and_get_digits")
    assert pagd is not None
    fields = pagd.split()
    assert fields[0:3] == ["1", "1", "2"] and fields[7] == "wa_choice"
    assert hunt(doc, "wa-routes", "ivr-1").first("transfer") == "sales XML wa-routes"
    for other in ("ivr-2", "ivr-", "ivr-#"):
        assert hunt(doc, "wa-routes", other).first("transfer") == "support XML wa-routes"
    sales = hunt(doc, "wa-routes", "sales")
    assert sales.first("bridge") == sales.variables["wagw_sales_target"]


@pytest.mark.parametrize(
    ("dialled", "target"),
    [
        ("0012195550714", "+12195550714"),
        ("+12195550714", "+12195550714"),
        ("004915123456789", "+4915123456789"),
        ("US.13491208655302741918", "US.13491208655302741918"),
    ],
)
def test_calls_to_whatsapp_users_bridge_to_the_gateway(
    doc: ET.Element, dialled: str, target: str
) -> None:
    h = hunt(doc, "to-whatsapp", dialled)
    assert h.first("bridge") == (
        "{absolute_codec_string=PCMU\\,PCMA,"
        f"sip_h_X-WA-Business-Number={BUSINESS}}}sofia/gateway/whatsapp/{target}"
    )
    assert ("transfer", "${originate_disposition} XML wa-failure") in h.actions


@pytest.mark.parametrize(
    "dialled", ["1000", "12195550714", "+0123456789", "00123", "+1219555071499999"]
)
def test_other_dialled_strings_do_not_go_to_whatsapp(doc: ET.Element, dialled: str) -> None:
    assert hunt(doc, "to-whatsapp", dialled).first("bridge") is None


# FreeSWITCH's SIP status -> hangup cause (sofia_glue_sip_cause_to_freeswitch, 1.10)
_FS_CAUSE = {
    403: "CALL_REJECTED",
    603: "CALL_REJECTED",
    404: "UNALLOCATED_NUMBER",
    408: "RECOVERY_ON_TIMER_EXPIRE",
    480: "NO_USER_RESPONSE",
    484: "INVALID_NUMBER_FORMAT",
    486: "USER_BUSY",
    487: "ORIGINATOR_CANCEL",
    488: "INCOMPATIBLE_DESTINATION",
    502: "NETWORK_OUT_OF_ORDER",
    503: "NORMAL_TEMPORARY_FAILURE",
}
_HEARD = {
    400: "rejected",
    403: "rejected",
    404: "unavailable",
    408: "unavailable",
    480: "unavailable",
    486: "busy",
    487: None,
    488: "congestion",
    503: "congestion",
    603: "rejected",
}


@pytest.mark.parametrize("meta_status", sorted(mapping.META_TO_PBX))
def test_every_failure_the_gateway_returns_is_heard(doc: ET.Element, meta_status: int) -> None:
    """Meta's answer -> the gateway's table -> FreeSWITCH's cause -> the prompt."""
    cause = _FS_CAUSE[mapping.meta_failure_to_pbx(meta_status)]
    h = hunt(doc, "wa-failure", cause)
    heard = _HEARD[meta_status]
    assert h.first("hangup") == cause
    if heard is None:
        assert h.first("playback") is None
    else:
        assert h.first("playback") == h.variables[f"wagw_prompt_{heard}"]
        log = h.first("log")
        assert log is not None and f"prompt={heard} cause={cause}" in log


def test_the_local_failures_are_heard_too(doc: ET.Element) -> None:
    """No answer from Meta (503), the gateway down (FreeSWITCH's own causes)."""
    for cause in ("NORMAL_TEMPORARY_FAILURE", "DESTINATION_OUT_OF_ORDER", "GATEWAY_DOWN", ""):
        h = hunt(doc, "wa-failure", cause)
        assert h.first("playback") == h.variables["wagw_prompt_congestion"]


def test_the_test_extensions_exist_for_the_routing_hook() -> None:
    tests = ET.parse(TEST_DIALPLAN).getroot()
    names = {c.get("name") for c in tests.iter("context")}
    assert names == {"wagw-tests"}
