"""Tools: every post-training verb (explain, attack, fairness, export, compress, distill, generate,
embed, anomaly, quality, forecast, serve, cv) and the synthetic data source, one module each.

Importing the package imports every tool, so their report sections, entry points and the
``synthetic`` source register themselves: adding a tool is adding a file.
"""

from ..core.registry import import_submodules

import_submodules(__name__)
