"""The foundation every layer imports: the base exception and the registry of factories.

Nothing here imports from the project, so ``topologies`` and ``clients`` may use
it without knowing about each other (see ``docs/ARCHITECTURE.md``).
"""

from etree.core.errors import EtreeError, ProtocolError
from etree.core.registry import Registry, check_option

__all__ = ["EtreeError", "ProtocolError", "Registry", "check_option"]
