"""wa-sip-gateway: WhatsApp Business Calling <-> PBX SIP gateway."""

__version__ = "0.1.0"
