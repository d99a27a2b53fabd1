"""The scenario format: a machine, its tasks and what happens to them, from a file."""

from .reader import *  # noqa: F403
from .reader import __all__  # noqa: F401
