"""User-facing errors.

Anything a user can cause (a typo in a recipe, a wrong path, a broken plugin) raises
:class:`LthError`. The CLI prints its message on one line and exits non-zero, with no
traceback; anything else is a bug in lth and keeps its traceback.
"""

from typing import Any, Iterable


class LthError(Exception):
    """A mistake in the user's input or environment, explained in one line."""


class PluginError(LthError):
    """A plugin failed to load, clashed with another, or returned something invalid."""


class NonFiniteLoss(LthError):
    """Training diverged: the loss became NaN or infinite. The run stops; earlier rounds stay."""


def choices(names: Iterable[Any]) -> str:
    """Format valid choices for an error message: sorted, comma-separated."""
    names = sorted(str(n) for n in names)
    return ", ".join(names) if names else "(none installed)"


def one_line(text: object) -> str:
    """``text`` on one line: the CLI promises a single ``lth: error: ...`` line, and a message
    that quotes a plugin's exception or a user's value may hold line breaks of its own."""
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


class Interrupted(KeyboardInterrupt):
    """Ctrl-C stopped a run: the message names its folder and the command that resumes it."""


class StopRequested(BaseException):
    """Raised by lth's Ctrl-C handler while a run trains. Not a ``KeyboardInterrupt``:
    Lightning turns that into ``sys.exit(1)``, which would leave the user a bare status 1
    instead of :class:`Interrupted`'s line and status 130."""


def did_you_mean(name: Any, valid: Iterable[Any], cutoff: float = 0.75) -> str:
    """`` (did you mean 'rate'?)`` when ``name`` is close to one valid choice (a typo is the
    likeliest mistake, and a list of 30 names hides the one meant), else ``""``."""
    import difflib

    if not isinstance(name, str):
        return ""
    close = difflib.get_close_matches(name, [str(v) for v in valid], n=1, cutoff=cutoff)
    return f" (did you mean {close[0]!r}?)" if close else ""
