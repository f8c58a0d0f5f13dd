"""Configuration of customer-pulse, the bottom layer above the pure scorers.

``settings``: the declarative, environment-reading :class:`~pulse_config.settings.Settings` and the builders of
the frozen configurations the scorers and the batch engine take; ``clv_params``: the fitted CLV parameter file.
Everything above (``streams``, ``pulse``) may import this package; it imports only ``scoring``.
"""
