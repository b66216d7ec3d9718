"""From the config model to what the services are given: media settings, a reload's merge."""

from __future__ import annotations

from typing import Any

from gateway.config import Config, MediaConfig
from gateway.media.settings import MediaSettings

__all__ = ["LIVE_SECTIONS", "media_settings", "merge_live"]

# Sections a reload leaves as they were: they need new sockets or objects.
LIVE_SECTIONS = ("media", "http", "sip", "cluster")


def media_settings(media: MediaConfig) -> MediaSettings:
    """The bridge's plain settings from the config's ``media`` section."""
    return MediaSettings(
        no_media_timeout=media.no_media_timeout,
        opus_complexity=media.opus_complexity,
        latch=media.latch,
        latch_window=media.latch_window,
        dtls_timeout=media.dtls_timeout,
        engine=media.engine,
    )


def merge_live(old: Config, new: Config) -> tuple[Config, list[str]]:
    """``new`` with the keys that need new sockets or objects kept from ``old``; and the
    names of those keys that the new file changes (they wait for a restart)."""
    keep_wa = (
        "listen",
        "hostname",
        "allowed_networks",
        "advertise",
        "trusted_proxies",
        "proxy_listen",
        "proxy_transport",
        "outbound_proxy",
    )
    keep_pbx = ("address", "transport", "listen", "trusted_networks")
    changed: list[str] = []
    for section, keys in (("whatsapp", keep_wa), ("pbx", keep_pbx)):
        for key in keys:
            if getattr(getattr(new, section), key) != getattr(getattr(old, section), key):
                changed.append(f"{section}.{key}")
    old_ca = old.whatsapp.tls.ca_file if old.whatsapp.tls is not None else None
    if (new.whatsapp.tls.ca_file if new.whatsapp.tls is not None else None) != old_ca:
        changed.append("whatsapp.tls.ca_file")
    for section in LIVE_SECTIONS:
        if getattr(new, section) != getattr(old, section):
            changed.append(section)
    tls = new.whatsapp.tls
    if tls is not None:
        tls = tls.model_copy(update={"ca_file": old_ca})
    wa_update: dict[str, Any] = {k: getattr(old.whatsapp, k) for k in keep_wa}
    wa = new.whatsapp.model_copy(update={**wa_update, "tls": tls})
    pbx = new.pbx.model_copy(update={k: getattr(old.pbx, k) for k in keep_pbx})
    effective = new.model_copy(
        update={
            "whatsapp": wa,
            "pbx": pbx,
            **{key: getattr(old, key) for key in LIVE_SECTIONS},
        }
    )
    return effective, changed
