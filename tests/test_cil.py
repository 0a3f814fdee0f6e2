"""api.cil reads CIL text into the same s-expressions that secilc's lexer and parser build."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from api import cil
from api.cil import Atom, CilSyntaxError, Expr, parse


def shape(node: cil.Node) -> object:
    """A node as nested lists of texts, strings marked with their quotes."""
    if isinstance(node, Atom):
        return f'"{node.text}"' if node.quoted else node.text
    return [shape(item) for item in node.items]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "(allow process self (file (read)))", [["allow", "process", "self", ["file", ["read"]]]]
        ),
        pytest.param("(a)(b) c", [["a"], ["b"], "c"], id="top-level-atoms-and-adjacent-lists"),
        pytest.param("( \t a\n\tb )", [["a", "b"]], id="space-tab-newline"),
        pytest.param("(a ; b)\n)", [["a"]], id="comment-to-end-of-line"),
        pytest.param("(a ; b)\r)", [["a"]], id="carriage-return-ends-a-comment"),
        pytest.param('(a "b ) (c ; d")', [["a", '"b ) (c ; d"']], id="string-holds-parens-and-semicolons"),
        pytest.param('("allow")', [['"allow"']], id="quoted-keyword-stays-marked"),
        pytest.param('(a "")', [["a", '""']], id="empty-string"),
        pytest.param(
            "(.init_t a.b [x]@=/*-_$%+!|&^:~`#{}'<>?,)", [[".init_t", "a.b", "[x]@=/*-_$%+!|&^:~`#{}'<>?,"]]
        ),
        pytest.param('(a"b")', [["a", '"b"']], id="string-right-after-symbol"),
        pytest.param("", [], id="empty"),
        pytest.param("; only a comment", [], id="only-a-comment"),
    ],
)
def test_parse_splits_like_secilc(text: str, expected: list[object]) -> None:
    assert [shape(node) for node in parse(text)] == expected


def test_lists_carry_their_line_and_exact_source() -> None:
    text = "; header\n(blockinherit container)\r\n(allow process\n  self (file (read)))"

    first, second = parse(text)

    assert isinstance(first, Expr)
    assert isinstance(second, Expr)
    assert (first.line, second.line) == (2, 4)  # secilc counts '\r' as a line end too
    assert text[second.start : second.end] == "(allow process\n  self (file (read)))"
    inner = second.items[3]
    assert isinstance(inner, Expr)
    assert (inner.line, text[inner.start : inner.end]) == (5, "(file (read))")


@pytest.mark.parametrize(
    ("text", "problem", "line"),
    [
        pytest.param("(a))", "unmatched closing parenthesis ')'", 1, id="unmatched-close"),
        pytest.param("(a)\n\n) (b", "unmatched closing parenthesis ')'", 3, id="unmatched-close-line"),
        pytest.param("(a\n(b)", "1 unclosed parenthesis '('", 1, id="unclosed"),
        pytest.param('(a "b)', "unterminated string", 1, id="unterminated-string"),
        pytest.param('(a\n"b\n")', "unterminated string", 2, id="string-across-lines"),
        pytest.param("(a \f)", "invalid character '\\x0c'", 1, id="form-feed"),
        pytest.param("(a \x00)", "invalid character '\\x00'", 1, id="nul"),
        pytest.param("(caf\u00e9)", "invalid character 'é'", 1, id="non-ascii"),
        pytest.param("(a\u00a0b)", "invalid character '\\xa0'", 1, id="no-break-space"),
        pytest.param("(" * (cil.MAX_DEPTH + 1), "parentheses nested deeper than 4096", 1, id="too-deep"),
    ],
)
def test_parse_refuses_what_secilc_cannot_parse(text: str, problem: str, line: int) -> None:
    with pytest.raises(CilSyntaxError) as raised:
        parse(text)

    assert (raised.value.problem, raised.value.line) == (problem, line)
    assert str(raised.value) == f"{problem} (line {line})"


def test_nesting_up_to_the_limit_parses_without_recursion() -> None:
    depth = cil.MAX_DEPTH
    (node,) = parse("(" * depth + ")" * depth)

    for _ in range(depth - 1):
        assert isinstance(node, Expr)
        (node,) = node.items
    assert node == Expr((), 1, depth - 1, depth + 1)


# Pieces that matter to the lexer, so random texts hit its corners (strings, comments, line ends).
FRAGMENTS = ["(", ")", '"', ";", "\r", "\n", " ", "\t", "\f", "a", "é", "allow", "process", "(file (read))"]


@given(st.lists(st.sampled_from(FRAGMENTS), max_size=60).map("".join))
def test_any_text_parses_or_is_refused_and_each_list_reparses_alone(text: str) -> None:
    try:
        nodes = parse(text)
    except CilSyntaxError as error:
        assert error.line >= 1
        return
    for node in nodes:
        if isinstance(node, Expr):
            (again,) = parse(text[node.start : node.end])
            assert shape(again) == shape(node)
