"""The fault spec grammar: one string for the CLI, BITNET_INJECT, markers and fixtures.

::

    spec   := entry (';' entry)*
    entry  := point '=' term ('->' term)*
    term   := [P '%'] [N '*'] action ['(' arg ')']
    action := off | fail[(code)] | oom | delay(ms) | hang | missing | nan | grow | crash

``point`` is a registered name (``tokenize.fill``), a prefix ending in
``*`` (``session.*``) or ``*`` alone.  A hit walks the chain and takes the
first term that applies: a term with ``N*`` applies to N hits (those it is
taken for), one with ``P%`` to each hit with probability P; a term with
neither applies to every hit.  No term taken: nothing happens.  So
``alloc=2*off->oom`` fails every allocation from the 3rd on and
``alloc=2*off->1*oom->off`` exactly the 3rd (gofail / fail-rs semantics).

Extensions to the grammar of DESIGN.md:

* blanks around tokens are ignored, and one trailing ``;`` is allowed;
* ``fail``'s code may be a name: ``fail(-4)``, ``fail(inference)`` and
  ``fail(BITNET_E_INFERENCE)`` are the same;
* ``grow`` takes an optional count, ``grow(n)`` (default 1);
* ``P`` may have decimals (``0.5%``).

Parsing (:func:`parse`) is pure: it checks the grammar and needs no native
library.  Checking a parsed spec against the registry -- point names, the
actions each point performs, error codes, and the native engine's limits --
and compiling it to the native form is :func:`resolve`, which
:func:`fault_inject.registry.validate` calls with what the library reports.
That is the one validator: the pytest plugin, :func:`fault_inject.arm` and
the command line all go through it, and keep its :class:`Resolved` result
instead of parsing again.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import Callable, Final, Iterable, Mapping, Protocol

__all__ = [
    "ACTIONS",
    "ARG_ACTIONS",
    "CompiledEntry",
    "Entry",
    "FaultSpecError",
    "Limits",
    "Resolved",
    "Spec",
    "Term",
    "closest_names",
    "parse",
    "resolve",
]

# Action names, in the order of the native BITNET_FAULT_* enum
# (fault_inject.registry checks the two agree when it loads).
ACTIONS: Final[tuple[str, ...]] = ("off", "fail", "oom", "delay", "hang", "missing", "nan", "grow", "crash")
# Which actions take an argument: "required", "optional", or absent (none).
ARG_ACTIONS: Final[Mapping[str, str]] = {"fail": "optional", "delay": "required", "grow": "optional"}


@dataclass(frozen=True)
class Limits:
    """What the native engine accepts (bitnet_fault.h's BITNET_FAULT_MAX_*)."""

    terms: int  # terms per chain
    name: int  # bytes of a point name or pattern, NUL included
    count: int  # the largest N of 'N*'
    delay_ms: int  # the longest delay(ms); 'hang' waits for the deadline
    grow: int  # the largest grow(n)


class FaultSpecError(ValueError):
    """A spec that does not parse, names an unknown point, or asks the impossible.

    ``column`` is 1-based within ``spec``; ``expected`` says what would have
    been accepted there; ``source`` names where the spec came from
    (``"BITNET_INJECT"``, a marker, ...), if known.
    """

    def __init__(self, reason: str, spec: str, column: int, *, expected: str | None = None, source: str | None = None) -> None:
        self.reason = reason
        self.spec = spec
        self.column = column
        self.expected = expected
        self.source = source
        where = f" from {source}" if source else ""
        text = f"invalid fault spec{where} at column {column}: {reason}"
        if expected:
            text += f"; expected {expected}"
        caret = " " * (column - 1) + "^"
        super().__init__(f"{text}\n    {spec}\n    {caret}")


@dataclass(frozen=True)
class Term:
    """One term of a chain: ``[P%][N*]action[(arg)]``."""

    action: str
    percent: float | None = None  # P, in (0, 100]; None = every hit
    count: int | None = None  # N; None = no limit
    arg: int | str | None = None  # fail: code or code name; delay: ms; grow: n
    column: int = field(default=1, compare=False)  # where the term starts (1-based)
    arg_column: int = field(default=0, compare=False)  # where its argument starts

    def __str__(self) -> str:
        text = ""
        if self.percent is not None:
            text += f"{self.percent:g}%"
        if self.count is not None:
            text += f"{self.count}*"
        text += self.action
        if self.arg is not None:
            text += f"({self.arg})"
        return text

    @property
    def unbounded(self) -> bool:
        """True if the term applies to every hit (no count, no probability)."""
        return self.count is None and self.percent is None


@dataclass(frozen=True)
class Entry:
    """``point=term->term...``: one point (or pattern) and its chain."""

    point: str
    terms: tuple[Term, ...]
    column: int = field(default=1, compare=False)

    @property
    def wildcard(self) -> bool:
        return self.point.endswith("*")

    def __str__(self) -> str:
        return f"{self.point}=" + "->".join(str(t) for t in self.terms)


@dataclass(frozen=True)
class Spec:
    """A parsed spec; ``str(spec)`` is its canonical text."""

    entries: tuple[Entry, ...]
    text: str

    def __str__(self) -> str:
        return ";".join(str(e) for e in self.entries)


class PointLike(Protocol):
    """What resolve() needs to know of a registered point."""

    @property
    def name(self) -> str: ...

    @property
    def actions(self) -> frozenset[str]: ...

    @property
    def default_code(self) -> int: ...


@dataclass(frozen=True)
class CompiledEntry:
    """What the native engine receives for one entry."""

    pattern: str
    points: tuple[str, ...]  # the registered points it arms
    terms: tuple[tuple[float, int, int, int], ...]  # (probability 0..1, count 0=unbounded, action id, arg)
    entry: Entry
    skipped: tuple[str, ...] = ()  # matched by a wildcard, but cannot perform the chain's actions


# ---- parsing -----------------------------------------------------------------

_POINT = re.compile(r"\*|[A-Za-z_][A-Za-z0-9_.]*\*?")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_INT_ARG = re.compile(r"[+-]?\d+")


class _Parser:
    __slots__ = ("text", "pos", "source")

    def __init__(self, text: str, source: str | None) -> None:
        self.text = text
        self.pos = 0
        self.source = source

    def error(self, reason: str, expected: str | None = None, at: int | None = None) -> FaultSpecError:
        return FaultSpecError(reason, self.text, (self.pos if at is None else at) + 1, expected=expected, source=self.source)

    def blanks(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in " \t":
            self.pos += 1

    def found(self) -> str:
        if self.pos >= len(self.text):
            return "the end of the spec"
        return repr(self.text[self.pos : self.pos + 12])

    def eat(self, token: str) -> bool:
        self.blanks()
        if self.text.startswith(token, self.pos):
            self.pos += len(token)
            return True
        return False

    def match(self, pattern: re.Pattern[str]) -> str | None:
        self.blanks()
        m = pattern.match(self.text, self.pos)
        if not m:
            return None
        self.pos = m.end()
        return m.group()

    def spec(self) -> Spec:
        entries: list[Entry] = []
        while True:
            entries.append(self.entry())
            if self.eat(";"):
                self.blanks()
                if self.pos == len(self.text):
                    break  # one trailing ';'
                continue
            self.blanks()
            if self.pos != len(self.text):
                raise self.error(f"found {self.found()} after the entry", "';' and another entry, '->' and another term, or the end")
            break
        return Spec(tuple(entries), self.text)

    def entry(self) -> Entry:
        self.blanks()
        start = self.pos
        point = self.match(_POINT)
        if point is None:
            raise self.error(f"found {self.found()}", "a fault point name such as 'tokenize.fill' or a prefix such as 'session.*'")
        if not self.eat("="):
            raise self.error(f"found {self.found()} after the point name {point!r}", "'=' and a term, as in 'alloc=oom'")
        terms = [self.term()]
        while self.eat("->"):
            terms.append(self.term())
        for i, t in enumerate(terms[:-1]):
            if t.unbounded:
                nxt = terms[i + 1]
                raise self.error(
                    f"term {i + 2} ({nxt}) can never be reached: term {i + 1} ({t}) applies to every hit",
                    f"a count on term {i + 1} (as in '2*{t}->{nxt}') or a probability",
                    at=nxt.column - 1,
                )
        return Entry(point, tuple(terms), start + 1)

    def term(self) -> Term:
        self.blanks()
        start = self.pos
        percent: float | None = None
        count: int | None = None
        num = self.match(_NUMBER)
        if num is not None:
            num_at = self.pos - len(num)
            if self.eat("%"):
                percent = float(num)
                if not 0 < percent <= 100:
                    raise self.error(
                        f"probability {num}% is out of range" + (" (0% never fires: use 'off')" if percent == 0 else ""),
                        "a percentage above 0 and at most 100",
                        at=num_at,
                    )
                num = self.match(_NUMBER)
                num_at = self.pos - len(num) if num else num_at
            if num is not None:
                if not self.eat("*"):
                    raise self.error(f"found {self.found()} after the number {num}", "'%' (a probability) or '*' (a count)")
                if "." in num:
                    raise self.error(f"count {num} is not a whole number", "a count such as '3*'", at=num_at)
                count = int(num)
                if count == 0:
                    raise self.error(f"count {num} is out of range (0* never fires: leave the term out)", "a count of at least 1", at=num_at)
        self.blanks()
        action_at = self.pos
        action = self.match(_IDENT)
        if action is None:
            raise self.error(f"found {self.found()}", "an action: " + ", ".join(ACTIONS))
        if action not in ACTIONS:
            near = difflib.get_close_matches(action.lower(), ACTIONS, n=1, cutoff=0.5)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise self.error(f"unknown action {action!r}{hint}", "one of " + ", ".join(ACTIONS), at=action_at)
        arg: int | str | None = None
        if self.eat("("):
            self.blanks()
            arg_at = self.pos
            if action not in ARG_ACTIONS:
                raise self.error(f"{action!r} takes no argument", f"{action!r} alone", at=arg_at - 1)
            raw = self.match(_INT_ARG)
            if raw is None and action == "fail":
                raw = self.match(_IDENT)
            if raw is None:
                what = "an error code (a negative number or a name such as 'inference')" if action == "fail" else "a whole number"
                raise self.error(f"found {self.found()} as the argument of {action!r}", what)
            arg = raw if not _INT_ARG.fullmatch(raw) else int(raw)
            if not self.eat(")"):
                raise self.error(f"found {self.found()} after the argument of {action!r}", "')'")
            self._check_arg(action, arg, arg_at)
            return Term(action, percent, count, arg, start + 1, arg_at + 1)
        if ARG_ACTIONS.get(action) == "required":
            raise self.error(f"{action!r} needs an argument", f"{action}(ms), as in 'delay(50)'")
        return Term(action, percent, count, None, start + 1)

    def _check_arg(self, action: str, arg: int | str, at: int) -> None:
        # the upper bounds are the engine's (resolve checks them)
        if action == "delay" and isinstance(arg, int) and arg < 0:
            raise self.error(f"delay({arg}) is out of range", "a delay of 0 ms or more", at=at)
        elif action == "grow" and (not isinstance(arg, int) or arg < 1):
            raise self.error(f"grow({arg}) is out of range", "a growth of at least 1", at=at)
        elif action == "fail" and isinstance(arg, int) and arg >= 0:
            raise self.error(f"fail({arg}) is not an error code", "a negative BITNET_E_* code such as -4, or a name such as 'inference'", at=at)


def parse(text: str, *, source: str | None = None) -> Spec:
    """Parses a spec; raises FaultSpecError naming the column and what was expected.

    ``source`` names where the text came from, for the message.
    """
    if not isinstance(text, str):
        raise TypeError(f"a fault spec is a str, got {type(text).__name__}")
    if not text.strip():
        raise FaultSpecError("the spec is empty", text, 1, expected="an entry such as 'alloc=oom'", source=source)
    return _Parser(text, source).spec()


# ---- resolving against the registry ------------------------------------------------


def closest_names(name: str, known: Iterable[str], n: int = 3) -> list[str]:
    """Up to n registered names (or 'prefix.*' patterns) closest to name."""
    names = sorted(set(known))
    candidates = names + sorted({k.rsplit(".", 1)[0] + ".*" for k in names if "." in k})
    if name.endswith("*"):
        candidates = [c for c in candidates if c.endswith("*")] or candidates
    near = difflib.get_close_matches(name, candidates, n=n, cutoff=0.5)
    if len(near) < n:  # names sharing the part before the first dot
        head = name.split(".", 1)[0].rstrip("*")
        near += [c for c in candidates if head and c.startswith(head) and c not in near][: n - len(near)]
    return near


def _matches(pattern: str, name: str) -> bool:
    return name.startswith(pattern[:-1]) if pattern.endswith("*") else name == pattern


@dataclass(frozen=True)
class Resolved:
    """A spec checked against the registry: what arm() takes without checking again.

    ``str(resolved)`` is the canonical text.
    """

    spec: Spec
    entries: tuple[CompiledEntry, ...]
    source: str | None = None

    def __str__(self) -> str:
        return str(self.spec)

    @property
    def points(self) -> tuple[str, ...]:
        """Every registered point the spec arms."""
        return tuple(n for e in self.entries for n in e.points)

    @property
    def probabilistic(self) -> bool:
        """Whether a term draws (P%), so the seed matters."""
        return any(t.percent is not None for e in self.spec.entries for t in e.terms)

    @property
    def hangs(self) -> tuple[str, ...]:
        """The entries (patterns) with a ``hang`` term: they end only at a deadline or cancel()."""
        return tuple(e.point for e in self.spec.entries if any(t.action == "hang" for t in e.terms))


def resolve(
    spec: Spec,
    points: Mapping[str, PointLike],
    codes: Mapping[str, int],
    limits: Limits,
    *,
    source: str | None = None,
) -> Resolved:
    """Checks spec against the registry and compiles it for the native engine.

    ``points`` maps registered names to their descriptions; ``codes`` maps
    code names (``"BITNET_E_INFERENCE"``) to values; ``limits`` are the
    engine's.  Refuses unknown points (naming the closest), patterns
    matching nothing, a point reached by two entries, actions a named point
    does not perform (a pattern arms only the points that perform them, and
    is refused when none does), unknown codes, and values beyond the limits.
    """

    def err(reason: str, column: int, expected: str | None = None) -> FaultSpecError:
        return FaultSpecError(reason, spec.text, column, expected=expected, source=source)

    by_value = {v: k for k, v in codes.items()}
    compiled: list[CompiledEntry] = []
    owner: dict[str, Entry] = {}
    for entry in spec.entries:
        _check_limits(entry, limits, err)
        matched = tuple(n for n in points if _matches(entry.point, n))
        if not matched:
            near = closest_names(entry.point, points)
            what = "no registered fault point matches" if entry.wildcard else "unknown fault point"
            raise err(
                f"{what} {entry.point!r}",
                entry.column,
                ("one of " + ", ".join(repr(n) for n in near) + "; " if near else "") + "fault_inject.points() lists every point",
            )
        skipped: tuple[str, ...] = ()
        if entry.wildcard:
            # A pattern arms the points it matches that can perform its
            # chain: `llama_*=fail` fails every function that can fail and
            # leaves the frees counting (a free has no failure to report).
            # Naming a point that cannot perform the action stays an error.
            able = tuple(n for n in matched if all(t.action in points[n].actions for t in entry.terms))
            if not able:
                wanted = sorted({t.action for t in entry.terms}, key=ACTIONS.index)
                raise err(
                    f"none of the {len(matched)} points matched by {entry.point!r} performs " + " and ".join(repr(a) for a in wanted),
                    entry.column,
                    "a pattern whose points perform the action; fault_inject.points() lists what each performs",
                )
            skipped = tuple(n for n in matched if n not in able)
            matched = able
        for name in matched:
            if name in owner:
                first = owner[name]
                raise err(
                    f"point {name!r} is armed twice: by {first.point!r} (column {first.column}) and by {entry.point!r}",
                    entry.column,
                    "one entry per point; chain terms with '->' instead",
                )
            owner[name] = entry
        terms: list[tuple[float, int, int, int]] = []
        for term in entry.terms:
            for name in matched:
                if term.action not in points[name].actions:
                    supported = ", ".join(a for a in ACTIONS if a in points[name].actions)
                    raise err(f"point {name!r} does not support {term.action!r}", term.column, f"one of: {supported}")
            arg = 0
            if term.action == "fail" and term.arg is not None:
                arg = _code(term, codes, by_value, err)
            elif isinstance(term.arg, int):
                arg = term.arg
            prob = 1.0 if term.percent is None else term.percent / 100.0
            terms.append((prob, term.count or 0, ACTIONS.index(term.action), arg))
        compiled.append(CompiledEntry(entry.point, matched, tuple(terms), entry, skipped))
    return Resolved(spec, tuple(compiled), source)


def _check_limits(entry: Entry, limits: Limits, err: Callable[..., FaultSpecError]) -> None:
    if len(entry.point) >= limits.name:
        raise err(f"point name is {len(entry.point)} characters long", entry.column, f"at most {limits.name - 1}")
    if len(entry.terms) > limits.terms:
        raise err(f"{len(entry.terms)} terms in one chain", entry.terms[limits.terms].column, f"at most {limits.terms}")
    for term in entry.terms:
        if term.count is not None and term.count > limits.count:
            raise err(f"count {term.count} is out of range", term.column, f"1..{limits.count}")
        if term.action == "delay" and isinstance(term.arg, int) and term.arg > limits.delay_ms:
            raise err(f"delay({term.arg}) is out of range", term.arg_column, f"0..{limits.delay_ms} ms (use 'hang' to wait for the deadline)")
        if term.action == "grow" and isinstance(term.arg, int) and term.arg > limits.grow:
            raise err(f"grow({term.arg}) is out of range", term.arg_column, f"1..{limits.grow}")


def _code(term: Term, codes: Mapping[str, int], by_value: Mapping[int, str], err: Callable[..., FaultSpecError]) -> int:
    arg = term.arg
    col = term.arg_column
    if isinstance(arg, int):
        if arg not in by_value:
            raise err(f"fail({arg}): no such error code", col, "one of " + ", ".join(f"{v} ({k})" for v, k in sorted(by_value.items(), reverse=True)))
        return arg
    assert isinstance(arg, str)
    key = arg.upper()
    for cand in (key, "BITNET_E_" + key, "BITNET_" + key):
        if cand in codes:
            return codes[cand]
    short = sorted(k.removeprefix("BITNET_E_").lower() for k in codes)
    near = difflib.get_close_matches(arg.lower(), short, n=3, cutoff=0.5)
    hint = f" (did you mean {' or '.join(repr(n) for n in near)}?)" if near else ""
    raise err(f"fail({arg}): unknown error code name{hint}", col, "a code name: " + ", ".join(short))

