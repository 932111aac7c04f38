"""Mixed precision by coding length (Algorithm 1 of the Attention Round paper).

``coding_length`` (eq. 12), ``allocation`` (k-means bit assignment, size budget) and ``report``
(table, sizes, bar plot) are imported from their modules; this package's own import stays light
because ``quant.QuantConfig`` holds a ``MixedConfig``.
"""

from .config import MixedConfig

__all__ = ["MixedConfig"]
