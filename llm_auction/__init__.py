"""LLM-Auction stream: a generative ad auction that learns from its own traffic.

The package follows docs/design.md: ``schemas`` (wire format) and ``auction`` (the mechanism) at the
bottom, ``models`` and ``infra`` above them, then the services (``producers``, ``consumers``,
``trainer``), the Faust ``stream_app`` and the ``cli`` on top. Import-linter enforces the order.
"""

__version__ = "0.1.0"
