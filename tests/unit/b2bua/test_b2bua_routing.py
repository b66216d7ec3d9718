"""Who a business-initiated call is for, on behalf of which number, how fast, and what
Meta's failures become (gateway/b2bua/routing.py, the Meta half of mapping.py)."""

from __future__ import annotations

import itertools

import pytest

from gateway.b2bua import mapping
from gateway.b2bua.mapping import (
    META_TO_PBX,
    meta_failure_to_pbx,
    meta_warning_reason,
    warning_text,
)
from gateway.b2bua.routing import RateLimiter, RoutingError, normalise_number, whatsapp_user
from tests.emulator import META_WARNINGS

# =========================================================================== whatsapp_user


@pytest.mark.parametrize(
    ("dialled", "user"),
    [
        ("+12195550714", "+12195550714"),
        ("12195550714", "+12195550714"),
        ("0012195550714", "+12195550714"),
        ("+0012195550714", "+12195550714"),  # '+' and '00' both: still one number
        ("+4915123456789", "+4915123456789"),
        ("+12345678", "+12345678"),  # 8 digits: the shortest accepted
        ("+123456789012345", "+123456789012345"),  # 15 digits: E.164's maximum
        ("US.13491208655302741918", "US.13491208655302741918"),  # BSUID kept as is
        ("BR.123456", "BR.123456"),
    ],
)
def test_whatsapp_user(dialled: str, user: str) -> None:
    assert whatsapp_user(dialled) == user


@pytest.mark.parametrize(
    "dialled",
    [
        "1234567",  # 7 digits
        "+1234567",
        "+1234567890123456",  # 16 digits
        "12345",
        "0012345",
        "+0123456789",  # a country code never starts with 0
        "000123456789",
    ],
)
def test_incomplete_numbers_are_484(dialled: str) -> None:
    with pytest.raises(RoutingError) as info:
        whatsapp_user(dialled)
    assert info.value.status == 484


@pytest.mark.parametrize(
    "dialled",
    [
        None,
        "",
        "+",
        "00",
        "agent",
        "not-a-number",
        "+1-219-555-0714",  # visual separators are not dialled digits here
        "+1 2195550714",
        "12195550714x",
        "\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668\u0669",  # Arabic-Indic digits
        "us.13491208655302741918",  # a BSUID's country is upper case
        "US.12345",  # too short for a BSUID
        "US-13491208655302741918",
        "USA.13491208655302741918",
        "US.1349120865530274191x",
    ],
)
def test_junk_is_404(dialled: str | None) -> None:
    with pytest.raises(RoutingError) as info:
        whatsapp_user(dialled)
    assert info.value.status == 404
    assert info.value.why


# =========================================================================== normalise_number


@pytest.mark.parametrize(
    ("value", "number"),
    [
        ("+17015558857", "+17015558857"),
        ("17015558857", "+17015558857"),
        (" +17015558857 ", "+17015558857"),
        ("\t17015558857\r\n", "+17015558857"),
        (None, None),
        ("", None),
        ("   ", None),
        ("agent", None),
        ("+1 701 555 8857", None),
        ("+1-701-555-8857", None),
        ("0017015558857", None),  # a configured number is written +E.164, not dialled
        ("+0017015558857", None),
        ("+1701", None),
        ("sip:+17015558857@pbx", None),
        ("+17015558857;x=1", None),
    ],
)
def test_normalise_number(value: str | None, number: str | None) -> None:
    assert normalise_number(value) == number


# =========================================================================== RateLimiter


def test_rate_limiter_window_edges() -> None:
    rl = RateLimiter(3)
    t0 = 1000.0
    assert [rl.allow(t) for t in (t0, t0 + 0.2, t0 + 0.4)] == [True, True, True]
    assert rl.allow(t0 + 0.999) is False  # 3 in the last second already
    assert rl.allow(t0 + 1.0) is True  # t0 is exactly one second old: out of the window
    assert rl.allow(t0 + 1.1) is False  # t0+0.2, t0+0.4, t0+1.0
    assert rl.allow(t0 + 1.2) is True  # t0+0.2 left the window
    assert rl.allow(t0 + 1.399) is False
    assert rl.allow(t0 + 1.4) is True


def test_rate_limiter_refusals_do_not_count() -> None:
    rl = RateLimiter(1)
    assert rl.allow(0.0) is True
    for t in (0.1, 0.5, 0.9, 0.999):
        assert rl.allow(t) is False
    assert rl.allow(1.0) is True  # the refused attempts did not extend the window


def test_rate_limiter_burst_after_idle() -> None:
    rl = RateLimiter(10)
    assert all(rl.allow(5.0) for _ in range(10))
    assert rl.allow(5.0) is False
    assert all(rl.allow(100.0) for _ in range(10))  # long idle: a full window again
    assert rl.allow(100.5) is False


def test_rate_limiter_same_instant() -> None:
    rl = RateLimiter(2)
    assert [rl.allow(7.0) for _ in range(4)] == [True, True, False, False]


@pytest.mark.parametrize("rate", [1, 2, 5, 10, 50])
def test_rate_limiter_never_exceeds_the_rate_in_any_second(rate: int) -> None:
    rl = RateLimiter(rate)
    allowed = [t / 100 for t in range(0, 500) if rl.allow(t / 100)]
    for start in allowed:
        assert sum(1 for t in allowed if start <= t < start + 1.0) <= rate
    assert len(allowed) == 5 * rate  # and uses all of it


@pytest.mark.parametrize("rate", [2.5, 1.5, 0.5, 0.2, 0.3])
def test_fractional_rate_is_a_ceiling(rate: float) -> None:
    """numbers[].max_call_rate accepts any positive number: 2.5 is at most 2 in any one
    second (not 3), 0.5 one call every two seconds (not one a second)."""
    rl = RateLimiter(rate)
    allowed = [t / 100 for t in range(0, 1000) if rl.allow(t / 100)]  # 10 s, every 10 ms
    assert len(allowed) <= rate * 10 + 1  # the long-run rate, give or take the first call
    for start in allowed:
        assert sum(1 for t in allowed if start <= t < start + 1.0) <= max(1, rate)
    if rate < 1:
        gaps = [b - a for a, b in itertools.pairwise(allowed)]
        assert min(gaps) >= 1 / rate - 1e-9
        assert len(allowed) == int(10 * rate + 1e-9)  # and not fewer


# =========================================================================== meta_failure_to_pbx

EXPECTED_META_TO_PBX = {
    400: 403,
    403: 403,
    404: 404,
    408: 408,
    480: 480,
    486: 486,
    487: 487,
    488: 488,
    503: 503,
    603: 603,
}


def test_meta_table_is_exactly_the_policy() -> None:
    assert META_TO_PBX == EXPECTED_META_TO_PBX


@pytest.mark.parametrize(("meta", "pbx"), sorted(EXPECTED_META_TO_PBX.items()))
def test_each_meta_entry(meta: int, pbx: int) -> None:
    assert meta_failure_to_pbx(meta) == pbx


@pytest.mark.parametrize("status", [300, 301, 302, 380, 399])
def test_meta_redirects_are_unavailable(status: int) -> None:
    assert meta_failure_to_pbx(status) == 480


@pytest.mark.parametrize("status", [401, 402, 405, 407, 410, 413, 415, 420, 481, 482, 484, 499])
def test_unknown_meta_4xx_is_480(status: int) -> None:
    assert meta_failure_to_pbx(status) == 480


@pytest.mark.parametrize("status", [500, 501, 502, 504, 505, 580, 599])
def test_unknown_meta_5xx_is_502(status: int) -> None:
    assert meta_failure_to_pbx(status) == 502


def test_only_metas_own_503_is_503() -> None:
    """503 tells the PBX "try another route": only Meta's internal error says that."""
    assert [s for s in range(300, 700) if meta_failure_to_pbx(s) == 503] == [503]


@pytest.mark.parametrize("status", [600, 601, 604, 606, 699])
def test_meta_6xx_is_a_global_decline(status: int) -> None:
    assert meta_failure_to_pbx(status) == 603


def test_every_result_is_a_final_failure() -> None:
    for status in range(300, 700):
        assert 300 <= meta_failure_to_pbx(status) < 700


def test_local_conditions() -> None:
    assert mapping.META_UNREACHABLE == 503
    assert mapping.META_AUTH_REFUSED == 403


# =========================================================================== Meta's Warning


@pytest.mark.parametrize(("label", "text"), sorted(META_WARNINGS.items()))
def test_meta_warning_reason_for_each_meta_text(label: str, text: str) -> None:
    assert meta_warning_reason(f'399 wa.meta.vc "{text}"') == label
    assert meta_warning_reason(text) == label  # bare text too
    assert meta_warning_reason(text.upper()) == label  # case does not matter


def test_every_meta_warning_has_its_own_label() -> None:
    labels = [meta_warning_reason(t) for t in META_WARNINGS.values()]
    assert len(set(labels)) == len(labels)
    assert "other" not in labels and "none" not in labels


@pytest.mark.parametrize(("warning", "label"), [(None, "none"), ("", "none")])
def test_meta_warning_absent(warning: str | None, label: str) -> None:
    assert meta_warning_reason(warning) == label


@pytest.mark.parametrize(
    "warning", ['399 wa.meta.vc "Something new"', "garbage", '399 wa.meta.vc ""']
)
def test_meta_warning_unknown_is_other(warning: str) -> None:
    assert meta_warning_reason(warning) == "other"


@pytest.mark.parametrize(
    ("warning", "text"),
    [
        ('399 wa.meta.vc "SDP invalid"', "SDP invalid"),
        ('399 wa.meta.vc "a \\"quoted\\" word"', 'a \\"quoted\\" word'),
        ("399 wa.meta.vc no quotes", "399 wa.meta.vc no quotes"),
        ('399 wa.meta.vc "unterminated', '399 wa.meta.vc "unterminated'),
        ('399 wa.meta.vc ""', ""),
        (None, None),
        ("", None),
    ],
)
def test_warning_text(warning: str | None, text: str | None) -> None:
    assert warning_text(warning) == text
