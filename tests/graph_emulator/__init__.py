"""A Graph API emulator on loopback (Meta's calling settings, SIP password, health_status).

See :mod:`tests.graph_emulator.server`; the gateway's tests point
``meta_api.base_url`` at :attr:`GraphEmulator.base_url`, never at Meta.
"""

from tests.graph_emulator.server import APP_ID, TOKEN, Fault, GraphEmulator, NumberState

__all__ = ["APP_ID", "TOKEN", "Fault", "GraphEmulator", "NumberState"]
