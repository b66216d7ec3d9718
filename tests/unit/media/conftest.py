"""The bridge tests run against both media engines (issue 12): the Python reference
and the native one (skipped, and said so, where the extension is not built)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gateway.media import native
from gateway.media.native import load_native, native_error
from tests.unit.media import bridge_fakes


@pytest.fixture(params=["python", "native"])
def media_engine(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The engine of the test's bridges: Rig's default and BridgeFactory's setting."""
    engine: str = request.param
    if engine == "native" and load_native() is None:
        pytest.skip(f"native media engine not built: {native_error()}")
    monkeypatch.setattr(bridge_fakes, "ENGINE", engine)
    # BridgeFactory with the default media.engine (auto) makes this engine's bridges.
    resolve = native.resolve_engine
    monkeypatch.setattr(
        native,
        "resolve_engine",
        lambda requested: engine if requested == "auto" else resolve(requested),
    )
    yield engine


@pytest.fixture(params=["system", "pylibsrtp"])
def srtp_backend(request: pytest.FixtureRequest) -> Iterator[str]:
    """The libsrtp the native sessions run on: Debian's libsrtp2, or pylibsrtp's build."""
    module = load_native()
    if module is None:
        pytest.skip(f"native media engine not built: {native_error()}")
    before = module.srtp_backend()[0]
    assert module.use_srtp(request.param)[0] == request.param
    yield request.param
    module.use_srtp(before)
