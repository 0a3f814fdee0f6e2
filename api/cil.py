"""CIL's surface syntax: a policy text as the s-expressions secilc reads, each with its line and source.

The tokens follow libsepol's CIL lexer (cil_lexer.l) exactly, because a reader that splits the text
differently from secilc can be shown one policy while secilc compiles another:

- `;` starts a comment that ends at `\\n` *or* `\\r` (so `; note\\r(typepermissive x)` is a statement);
- a string is `"` up to the next `"` on the same line; its parentheses are text, and secilc reads
  `"allow"` and `allow` alike;
- a symbol is a run of ASCII letters, digits and ``[].@=/*-_$%+!|&^:~`#{}'<>?,``;
- space and tab separate tokens, `\\n` and `\\r` end lines; any other character (form feed, NUL,
  non-ASCII) is an error in secilc and here.

Nesting is limited as in secilc's parser, and parsing is iterative, so a deeply nested text is an
error message, never a RecursionError.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

_TOKEN: Final = re.compile(
    r"""
      (?P<newline>[\n\r])
    | (?P<space>[ \t]+)
    | (?P<comment>;[^\n\r]*)
    | (?P<open>\()
    | (?P<close>\))
    | (?P<string>"[^"\n]*")
    | (?P<symbol>[0-9A-Za-z\[\].@=/*\-_$%+!|&^:~`\#{}'<>?,]+)
    """,
    re.VERBOSE,
)

# secilc's CIL_PARSER_MAX_EXPR_DEPTH.
MAX_DEPTH: Final = 1 << 12

# The keywords of the statements profiles are made of (upstream's SelinuxProfile translation and the
# udica container templates).
ALLOW: Final = "allow"
BLOCKINHERIT: Final = "blockinherit"
TYPE: Final = "type"
TYPEPERMISSIVE: Final = "typepermissive"


@dataclass(frozen=True)
class Atom:
    """A symbol, or a string (`quoted`, `text` without its quotes)."""

    text: str
    quoted: bool
    line: int


@dataclass(frozen=True)
class Expr:
    """A parenthesised list; `text[start:end]` is its exact source, parentheses included."""

    items: tuple[Node, ...]
    line: int
    start: int
    end: int


Node = Atom | Expr


class CilSyntaxError(ValueError):
    """Text that secilc would not parse, with the line it stops at."""

    def __init__(self, problem: str, line: int) -> None:
        super().__init__(f"{problem} (line {line})")
        self.problem = problem
        self.line = line


@dataclass
class _Open:
    items: list[Node]
    line: int
    start: int


def parse(text: str) -> tuple[Node, ...]:
    """The top-level nodes of `text`, or CilSyntaxError where secilc would refuse to parse it."""
    top: list[Node] = []
    stack: list[_Open] = []
    line = 1
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            if text[position] == '"':
                raise CilSyntaxError("unterminated string", line)
            raise CilSyntaxError(f"invalid character {text[position]!r}", line)
        kind = match.lastgroup
        position = match.end()
        items = stack[-1].items if stack else top
        if kind == "newline":
            line += 1
        elif kind == "open":
            if len(stack) == MAX_DEPTH:
                raise CilSyntaxError(f"parentheses nested deeper than {MAX_DEPTH}", line)
            stack.append(_Open([], line, match.start()))
        elif kind == "close":
            if not stack:
                raise CilSyntaxError("unmatched closing parenthesis ')'", line)
            done = stack.pop()
            expr = Expr(tuple(done.items), done.line, done.start, position)
            (stack[-1].items if stack else top).append(expr)
        elif kind == "string":
            items.append(Atom(match.group()[1:-1], quoted=True, line=line))
        elif kind == "symbol":
            items.append(Atom(match.group(), quoted=False, line=line))
    if stack:
        raise CilSyntaxError(f"{len(stack)} unclosed parenthesis '('", stack[-1].line)
    return tuple(top)
