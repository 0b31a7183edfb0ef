"""filterd: an SMS consent filter for carrier messaging paths."""

from __future__ import annotations

__version__ = "0.1.0"
