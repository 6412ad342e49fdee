"""lth: lottery-ticket experiments on PyTorch Lightning, extended by plugins.

Plugins implement the hooks in :mod:`lth_core.plugin_api.hookspecs`, decorated with :data:`hookimpl`.
"""

from lth_core.plugin_api.hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["hookimpl", "__version__"]
