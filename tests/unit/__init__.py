"""Unit tests, laid out like ``gateway/``: one package per layer (``sip``, ``sdp``,
``media``, ``transport``, ``b2bua``, ``metaapi``, ``ops``, ``config``, ``logging``,
``app``, ``cli``), plus ``harness`` for the test peers and the bench's own pieces
and ``shipped`` for the configuration files shipped for other programs (FreeSWITCH).
Helpers a package's tests share are in its ``support.py`` or ``*_fakes.py``;
fixtures in its ``conftest.py``. No test module imports another."""
