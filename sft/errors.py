"""Errors a user can fix, and the wrapper that turns them into a message and an exit code."""

import functools
import sys


class UserError(Exception):
    """Something wrong with the user's input or environment: printed as a message, never as a traceback."""


class Interrupted(Exception):
    """The user stopped the run with Ctrl-C after it was saved in a resumable state; the message says how."""


def first_line(error: Exception) -> str:
    """A library exception's first line: enough to say what went wrong, without pages of detail."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _process_label() -> str:
    """'[process 3] ' in the other processes of a multi-GPU run (their errors print too: one may be theirs alone)."""
    from sft.distributed import is_main_process, rank

    return "" if is_main_process() else f"[process {rank()}] "


def exit_on_user_error(main):
    """Run `main`; a UserError becomes 'error: ...' on stderr and exit status 2, Ctrl-C a short note and 130."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as error:
            print(f"\n{_process_label()}error: {error}", file=sys.stderr)
            sys.exit(2)
        except Interrupted as stopped:
            print(f"\n{stopped}", file=sys.stderr)
            sys.exit(130)
        except KeyboardInterrupt:
            print("\nInterrupted. Nothing half-written was left behind; any earlier model folder is unchanged.",
                  file=sys.stderr)
            sys.exit(130)

    return wrapper
