"""PBX failure -> response toward Meta (gateway/b2bua/mapping.py)."""

from __future__ import annotations

import pytest

from gateway.b2bua import mapping
from gateway.b2bua.mapping import PBX_TO_META, pbx_failure_to_meta

# The table, entry by entry: a change here is a policy change and must be deliberate.
EXPECTED = {
    400: 480,
    401: 480,
    403: 403,
    404: 404,
    407: 480,
    408: 408,
    410: 404,
    480: 480,
    484: 404,
    486: 486,
    487: 487,
    488: 488,
    500: 480,
    502: 480,
    503: 480,
    504: 408,
    600: 486,
    603: 603,
    604: 404,
}


def test_table_is_exactly_the_policy() -> None:
    assert PBX_TO_META == EXPECTED


@pytest.mark.parametrize(("pbx", "meta"), sorted(EXPECTED.items()))
def test_each_entry(pbx: int, meta: int) -> None:
    assert pbx_failure_to_meta(pbx) == meta


@pytest.mark.parametrize("status", [300, 301, 302, 305, 380, 399])
def test_redirects_are_not_followed(status: int) -> None:
    assert pbx_failure_to_meta(status) == 480


@pytest.mark.parametrize("status", [402, 405, 406, 413, 415, 420, 422, 481, 482, 483, 491, 499])
def test_unknown_4xx(status: int) -> None:
    assert pbx_failure_to_meta(status) == 480


@pytest.mark.parametrize("status", [501, 505, 513, 580, 599])
def test_unknown_5xx(status: int) -> None:
    assert pbx_failure_to_meta(status) == 480


@pytest.mark.parametrize("status", [601, 606, 607, 608, 699])
def test_unknown_6xx_is_a_global_decline(status: int) -> None:
    assert pbx_failure_to_meta(status) == 603


def test_pbx_503_is_unavailable_not_overload() -> None:
    assert pbx_failure_to_meta(503) == 480


def test_no_pbx_status_maps_to_503() -> None:
    """503 toward Meta means "this gateway is overloaded": only the gateway decides that."""
    produced = {pbx_failure_to_meta(status) for status in range(300, 700)}
    assert 503 not in produced
    assert all(300 <= status < 700 for status in produced)
    assert mapping.PBX_NO_ANSWER_TO_INVITE != 503
    assert mapping.PBX_TRANSPORT_FAILURE != 503


def test_every_result_is_a_final_failure() -> None:
    for status in range(300, 700):
        assert pbx_failure_to_meta(status) >= 400


def test_local_conditions() -> None:
    assert mapping.PBX_NO_ANSWER_TO_INVITE == 408
    assert mapping.PBX_TRANSPORT_FAILURE == 480
