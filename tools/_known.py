"""Known-failure lists, as read and written by tools/upstream.py and tools/gevent_suite.py.

Model
-----
A list is a text file: a header of comment lines, then one entry a line::

    name  [modifier ...] outcome[|outcome ...][: text]  # reason

``name`` is what the runner judges (a test id for upstream.py, a file name for gevent_suite.py).
The *expectation* after it says how the entry is expected to fail: one of the runner's outcome
words (``fail``, ``error``, ``crash``, ... upstream; ``failed``, ``timeout``, ``crash``
gevent), or several separated by ``|``, optionally after modifier words the runner allows
(``flaky`` for gevent: the file may also pass), and optionally ``: text``, a piece of text
that must occur in what the runner reports about the failure (its exception line, traceback or
failing test cases). A listed test that fails some other way (a crash where an assertion was
expected, another assertion) is not the known failure: the runner reports it as unexpected.

An entry without an expectation, with an outcome the runner does not know or with a reason
missing is an error: the whole list is refused, naming the line.

Invariants
----------
- Parsing and writing round-trip: ``write(path, load(path, ...))`` changes no entry.
- Comment lines between entries are not kept by ``write`` (the header is: every line before the
  first entry).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class KnownListError(Exception):
    """A known-failure list that cannot be read; the message names the file and line."""


@dataclass(frozen=True)
class Entry:
    name: str
    outcomes: tuple[str, ...]  # the outcome words that count as this failure
    match: str = ""  # text the failure's report must contain ("" for any)
    modifiers: tuple[str, ...] = ()
    reason: str = ""

    def expects(self, outcome: str, report: str) -> bool:
        """Whether a result with this outcome and report is the failure the entry names."""
        return outcome in self.outcomes and self.match in report

    @property
    def expectation(self) -> str:
        words = [*self.modifiers, "|".join(self.outcomes)]
        return " ".join(words) + (f": {self.match}" if self.match else "")

    def line(self, width: int = 0) -> str:
        return f"{self.name.ljust(width)}  {self.expectation}  # {self.reason}"


def parse_line(
    line: str, outcomes: frozenset[str], modifiers: frozenset[str] = frozenset()
) -> Entry | None:
    """The entry of one line (None for a blank or comment line); KnownListError if malformed."""
    body, hash_, reason = line.partition("#")
    if not body.strip():
        return None
    name, _, rest = body.strip().partition(" ")
    words_text, colon, match = rest.strip().partition(":")
    words = words_text.split()
    if not words:
        raise KnownListError(
            f"{name}: no expectation; say how it is expected to fail "
            f"({' | '.join(sorted(outcomes))}), e.g. `{name}  {min(outcomes)}  # reason`"
        )
    if colon and not match.strip():
        raise KnownListError(f"{name}: an empty text after ':'")
    *mods, last = words
    unknown_mods = [m for m in mods if m not in modifiers]
    if unknown_mods:
        raise KnownListError(f"{name}: unknown modifier {unknown_mods[0]!r}")
    wanted = tuple(last.split("|"))
    unknown = [w for w in wanted if w not in outcomes]
    if unknown:
        raise KnownListError(
            f"{name}: unknown outcome {unknown[0]!r} (one of {', '.join(sorted(outcomes))})"
        )
    if not hash_ or not reason.strip():
        raise KnownListError(f"{name}: no reason (`  # why it fails`)")
    return Entry(name, wanted, match.strip(), tuple(mods), reason.strip())


def load(
    path: Path, outcomes: frozenset[str], modifiers: frozenset[str] = frozenset()
) -> dict[str, Entry]:
    """The entries of a list by name ({} if the file does not exist)."""
    entries: dict[str, Entry] = {}
    if not path.exists():
        return entries
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            entry = parse_line(line, outcomes, modifiers)
        except KnownListError as error:
            raise KnownListError(f"{path}:{number}: {error}") from None
        if entry is None:
            continue
        if entry.name in entries:
            raise KnownListError(f"{path}:{number}: {entry.name} is listed twice")
        entries[entry.name] = entry
    return entries


def header(path: Path, default: list[str]) -> list[str]:
    """The comment lines before the first entry, or ``default`` for a new file."""
    if not path.exists():
        return default
    lines: list[str] = []
    for line in path.read_text().splitlines():
        if line.partition("#")[0].strip():
            break
        lines.append(line)
    return lines


def write(path: Path, entries: dict[str, Entry], default_header: list[str]) -> None:
    """Rewrite the entries, sorted, keeping the header."""
    top = header(path, default_header)
    width = max((len(name) for name in entries), default=0)
    lines = [entries[name].line(width) for name in sorted(entries)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(top + lines) + "\n")
