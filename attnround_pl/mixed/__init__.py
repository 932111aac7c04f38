"""Mixed precision by coding length (Algorithm 1 of the Attention Round paper): a step before
quantization that gives every layer its weight bits.

``config`` (``MixedConfig``, the ``mixed`` section of a config), ``coding_length`` (eq. 12),
``allocation`` (k-means bit assignment, size budget: ``allocate_model``) and ``report`` (table,
sizes, bar plot). This package's own import stays light: the names below other than
``MixedConfig`` are imported from their modules on first use.
"""

from __future__ import annotations

from ..lazy import lazy_exports

_EXPORTS = {
    "config": ["MixedConfig", "MixedPrecisionError"],
    "allocation": ["Allocation", "allocate_model"],
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
