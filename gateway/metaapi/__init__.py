"""Meta's Graph API for WhatsApp Business Calling: what the ``meta`` commands and the
health poller use.

``graph``: the HTTP client (aiohttp; timeouts, retries, Graph error objects).
``settings``: Meta's calling settings, the config's expectations, the differences and
the change set. ``password``: the SIP password (fetch, rotate, write 0600).
``health``: Meta's health_status beside the gateway's own. The ``wa-sip-gateway
meta show | apply | fetch-password`` commands are in :mod:`gateway.cli.meta`.
"""
