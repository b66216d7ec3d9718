"""SDP for the gateway: the model, parser and serialiser (``session``), SDES key
parameters (``crypto``) and offer/answer for both legs (``negotiate``). Sans-IO."""
