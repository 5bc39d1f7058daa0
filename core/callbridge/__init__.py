"""callbridge: bridge live phone calls into rooms.

Plugin authors write ``from callbridge import hookimpl``.
"""

from callbridge.hookspecs import hookimpl, hookspec

__all__ = ["hookimpl", "hookspec"]
__version__ = "0.1.0"
