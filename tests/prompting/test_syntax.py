"""The prompt language: A1111 attention, NAI braces, prompt editing (pure text, no model)."""

from __future__ import annotations

import math

import lark
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import InvalidRequest
from engine.prompting import parse_attention, parse_weights, prompt_schedule, to_a1111, to_nai

# --- parse_attention: A1111's doctests, then A1111's rules case by case -------------------------

A1111_DOCTESTS = [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    (
        "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
        [
            ("a ", 1.0),
            ("house", 1.5730000000000004),
            (" ", 1.1),
            ("on", 1.0),
            (" a ", 1.1),
            ("hill", 0.55),
            (", sun, ", 1.1),
            ("sky", 1.4641000000000006),
            (".", 1.1),
        ],
    ),
]

RULES = [
    # nothing, and nesting: weights multiply, in A1111's float order
    ("", [("", 1.0)]),
    ("((a))", [("a", 1.2100000000000002)]),
    ("[a]", [("a", 1 / 1.1)]),
    ("[[a]]", [("a", 0.8264462809917354)]),
    # explicit weights, spaces allowed around the number, signs, leading dot
    ("(a:1.5)", [("a", 1.5)]),
    ("(a : 1.2 )", [("a ", 1.2)]),
    ("(a:-1)", [("a", -1.0)]),
    ("(a:+.5)", [("a", 0.5)]),
    ("((a:2))", [("a", 2.2)]),
    ("(a:1.5:2)", [("a:1.5", 2.0)]),  # only the last `:number)` is a weight
    ("[a:1.5)", [("a:1.5)", 1 / 1.1)]),  # `:w)` with no ( open is text
    # escapes and lone backslashes
    ("\\\\", [("\\", 1.0)]),
    ("a\\b", [("ab", 1.0)]),
    ("\\(a\\) (b)", [("(a) ", 1.0), ("b", 1.1)]),
    # stray closers and colons are text; unclosed openers close at the end
    ("a)b]c:d", [("a)b]c:d", 1.0)]),
    ("(a [b", [("a ", 1.1), ("b", 1.1 / 1.1)]),
    # brackets of different kinds close independently (A1111 keeps one stack per kind)
    ("a (b [c) d]", [("a ", 1.0), ("b ", 1.1), ("c", 1.1 * (1 / 1.1)), (" d", 1 / 1.1)]),
    # braces are plain text to A1111
    ("{a}", [("{a}", 1.0)]),
    # BREAK: a separate word, outside brackets
    ("a BREAK b", [("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]),
    ("BREAK", [("", 1.0), ("BREAK", -1.0), ("", 1.0)]),
    ("aBREAK b", [("aBREAK b", 1.0)]),
    ("a BREAKb", [("a BREAKb", 1.0)]),
    ("a break b", [("a break b", 1.0)]),
    # A1111 quirk: inside brackets BREAK keeps a weight, so it is encoded as the word
    ("(a BREAK b)", [("a", 1.1), ("BREAK", -1.1), ("b", 1.1)]),
    # prompt-editing brackets weigh like [ ] when read as a whole (A1111 schedules first)
    ("[a:b:0.5]", [("a:b:0.5", 1 / 1.1)]),
]


@pytest.mark.parametrize(("text", "expected"), A1111_DOCTESTS + RULES)
def test_parse_attention_matches_a1111(text: str, expected: list[tuple[str, float]]) -> None:
    assert parse_attention(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("(a:1.2.3)", r"The weight in ':1\.2\.3\)' is not a number"),
        ("(a:.)", r"The weight in ':\.\)' is not a number"),
        ("(a:" + "9" * 400 + ")", "is too large"),
    ],
)
def test_unreadable_weights_are_invalid_requests(text: str, message: str) -> None:
    # A1111 raises ValueError (or draws NaNs) here; we say what is wrong instead.
    with pytest.raises(InvalidRequest, match=message):
        parse_attention(text)


def _texts(pieces: list[str], max_size: int = 30) -> st.SearchStrategy[str]:
    """Strings made of these pieces (characters or longer syntax bits)."""
    return st.lists(st.sampled_from(pieces), max_size=max_size).map("".join)


@given(_texts(list("ab :().[]\\{}|1-+") + ["BREAK", " BREAK ", ":1.5)", ":.)"]))
@settings(max_examples=300)
def test_parse_attention_never_raises_anything_else(text: str) -> None:
    try:
        segments = parse_attention(text)
    except InvalidRequest:
        return
    assert segments
    # Text outside brackets and escapes comes back in order.
    plain = "".join(s for s, w in segments if (s, w) != ("BREAK", -1.0))
    assert len(plain) <= len(text)


@given(st.text(alphabet=st.characters(exclude_characters="\\()[]:")))
def test_text_without_syntax_is_one_segment(text: str) -> None:
    if "BREAK" not in text:
        assert parse_attention(text) == [(text, 1.0)]


# --- NAI braces and syntax modes -----------------------------------------------------------------

CONVERSIONS = [
    # (text, syntax, A1111 text)
    ("{x}", "a1111", "(x:1.05)"),
    ("{{x}}", "a1111", "(x:1.1025)"),
    ("{{{x}}}", "a1111", "(x:1.1576)"),
    ("a {b} c", "a1111", "a (b:1.05) c"),
    ("{a (b) c}", "a1111", "(a (b) c:1.05)"),
    ("{{x", "a1111", "(x:1.1025)"),
    ("{a (b", "a1111", "(a (b):1.05)"),
    ("[x]", "a1111", "[x]"),
    ("[x]", "nai", "(x:0.9524)"),
    ("[[x]]", "nai", "(x:0.907)"),
    ("{[x]}", "nai", "(x:1)"),
    ("[cat:dog:0.5] {x}", "nai", "[cat:dog:0.5] (x:1.05)"),
    ("[cat|dog] [x]", "nai", "[cat|dog] (x:0.9524)"),
    ("\\{x\\}", "a1111", "\\{x\\}"),
    ("(x:1.2), [y], z", "a1111", "(x:1.2), [y], z"),
]


@pytest.mark.parametrize(("text", "syntax", "expected"), CONVERSIONS)
def test_nai_emphasis_is_written_as_a1111_weights(text: str, syntax: str, expected: str) -> None:
    assert to_a1111(text, syntax) == expected


def test_conversion_keeps_weights_where_koishi_swap_changes_them() -> None:
    # koishi rewrites {x} as (x), which A1111 reads as 1.1, not NAI's 1.05.
    assert parse_attention(to_a1111("{x}")) == [("x", 1.05)]
    assert parse_attention("(x)") == [("x", 1.1)]
    assert parse_attention(to_a1111("{{x}}")) == parse_attention("(x:1.1025)")


@pytest.mark.parametrize(
    ("a1111", "nai"),
    [
        ("(x:1.1025)", "{{x}}"),
        ("(x:1.05) and (y:0.9524)", "{x} and [y]"),
        ("[x]", "(x:0.9091)"),
        ("(x)", "(x)"),
        ("[cat:dog:0.5]", "[cat:dog:0.5]"),
        ("{x}", "{x}"),
    ],
)
def test_a1111_weights_are_written_in_nai_syntax(a1111: str, nai: str) -> None:
    assert to_nai(a1111) == nai


def test_unknown_syntax_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="use a1111 or nai"):
        to_a1111("x", "novelai")


def _char_weights(segments: list[tuple[str, float]]) -> list[tuple[str, float]]:
    return [(c, w) for text, w in segments for c in text]


def _weighs_like(a: list[tuple[str, float]], b: list[tuple[str, float]]) -> bool:
    ca, cb = _char_weights(a), _char_weights(b)
    return [c for c, _ in ca] == [c for c, _ in cb] and all(
        math.isclose(wa, wb, rel_tol=1e-3, abs_tol=1e-4)
        for (_, wa), (_, wb) in zip(ca, cb, strict=True)
    )


PROMPTISH = _texts(list("ab ,:().[]{}|\\1") + ["0.5", ":1.2)"])


@given(PROMPTISH, st.sampled_from(["a1111", "nai"]))
@settings(max_examples=300)
def test_a1111_text_weighs_like_the_original(text: str, syntax: str) -> None:
    try:
        converted = to_a1111(text, syntax)
    except InvalidRequest:
        return
    assert _weighs_like(parse_attention(converted), parse_weights(text, syntax))
    if "{" not in text and (syntax == "a1111" or "[" not in text):
        assert converted == text  # nothing to convert: left exactly as written


@given(PROMPTISH)
@settings(max_examples=200)
def test_nai_text_weighs_like_the_a1111_original(text: str) -> None:
    try:
        converted = to_nai(text)
    except InvalidRequest:
        return
    assert _weighs_like(parse_weights(converted, "nai"), parse_weights(text, "a1111"))


# --- prompt editing and alternation ---------------------------------------------------------------

A1111_SCHEDULE_DOCTESTS = [
    ("test", [(10, "test")]),
    ("a [b:3]", [(3, "a "), (10, "a b")]),
    ("a [b: 3]", [(3, "a "), (10, "a b")]),
    ("a [[[b]]:2]", [(2, "a "), (10, "a [[b]]")]),
    ("[(a:2):3]", [(3, ""), (10, "(a:2)")]),
    ("a [b : c : 1] d", [(1, "a b  d"), (10, "a  c  d")]),
    ("a[b:[c:d:2]:1]e", [(1, "abe"), (2, "ace"), (10, "ade")]),
    ("a [unbalanced", [(10, "a [unbalanced")]),
    ("a [b:.5] c", [(5, "a  c"), (10, "a b c")]),
    # A1111's doctest expects [[5, 'a  c'], [10, 'a {b|d{ c']] but its code (lark 1.1.2 and
    # 1.3.1) returns the prompt unchanged: a `|` outside an alternation fails the parse.
    ("a [{b|d{:.5] c", [(10, "a [{b|d{:.5] c")]),
    ("((a][:b:c [d:3]", [(3, "((a][:b:c "), (10, "((a][:b:c d")]),
    ("[a|(b:1.1)]", [(i, "a" if i % 2 else "(b:1.1)") for i in range(1, 11)]),
    ("[fe|]male", [(i, "female" if i % 2 else "male") for i in range(1, 11)]),
    ("[fe|||]male", [(i, "female" if i % 4 == 1 else "male") for i in range(1, 11)]),
]

SCHEDULE_RULES = [
    ("[from::4] x", [(4, "from x"), (10, " x")]),  # [from::when] removes
    ("[a:b:0.25]", [(2, "a"), (10, "b")]),  # fraction of the steps, rounded down
    ("[a:b:1.5]", [(10, "a")]),  # a fraction > 1 never switches (A1111 ≥ v1.6)
    ("[a:b:1.0]", [(10, "a")]),
    ("[a:b:0]", [(10, "b")]),
    ("[a:b:-2]", [(10, "b")]),
    ("[a:b:20]", [(10, "a")]),  # a step past the end never switches
    ("[a:b:1e1]", [(10, "a")]),
    ("[a:b:c]", [(10, "[a:b:c]")]),  # not a number: a [ ] emphasis, left to the weights
    (
        "[a|b] x [c:d:5]",
        [(i, ("a" if i % 2 else "b") + " x " + ("c" if i <= 5 else "d")) for i in range(1, 11)],
    ),  # fmt: skip
    ("a | b", [(10, "a | b")]),  # a bare `|` fails the parse: text unchanged
    ("[a:b:5] \\", [(10, "[a:b:5] \\")]),  # so does a trailing backslash
    ("\\[a:b:5\\]", [(10, "\\[a:b:5\\]")]),  # escaped brackets are text
    ("{[a:b:5]}", [(5, "{a}"), (10, "{b}")]),
    ("(x [a:b:5]:1.2)", [(5, "(x a:1.2)"), (10, "(x b:1.2)")]),
]


@pytest.mark.parametrize(("text", "expected"), A1111_SCHEDULE_DOCTESTS + SCHEDULE_RULES)
def test_prompt_schedule_matches_a1111(text: str, expected: list[tuple[int, str]]) -> None:
    assert prompt_schedule(text, 10) == expected


def test_prompt_schedule_is_fast_on_long_bracket_heavy_prompts() -> None:
    import time

    text = ", ".join(f"tag{i} [a:b:0.{i % 9 + 1}] (x{i}:1.1) [[y]]" for i in range(100))[:4000]
    started = time.perf_counter()
    assert len(prompt_schedule(text, 150)) == 10
    prompt_schedule("[" * 4000, 28)
    prompt_schedule("[a|" * 1000 + "b" + "]" * 1000, 28)
    # lark's Earley parser (A1111's) takes tens of seconds on the first of these.
    assert time.perf_counter() - started < 2.0


# The schedule grammar of A1111 `modules/prompt_parser.py` (shared/notes/a1111-nai.md §1.3), run by
# lark as A1111 runs it: the reference our hand-written parser must agree with.
A1111_GRAMMAR = r"""
!start: (prompt | /[][():]/+)*
prompt: (emphasized | scheduled | alternate | plain | WHITESPACE)*
!emphasized: "(" prompt ")"
        | "(" prompt ":" prompt ")"
        | "[" prompt "]"
scheduled: "[" [prompt ":"] prompt ":" [WHITESPACE] NUMBER [WHITESPACE] "]"
alternate: "[" prompt ("|" [prompt])+ "]"
WHITESPACE: /\s+/
plain: /([^\\\[\]():|]|\\.)+/
%import common.SIGNED_NUMBER -> NUMBER
"""
_LARK = lark.Lark(A1111_GRAMMAR)


def _lark_schedule(text: str, steps: int) -> list[tuple[int, str]]:
    """A1111's get_learned_conditioning_prompt_schedules (no hires), on lark's parse tree."""

    def when(node: lark.Tree[lark.Token]) -> int:
        number = str(node.children[-2])
        value = float(number) * (steps if "." in number else 1)
        return min(steps, int(value))

    def text_at(node: object, step: int) -> str:
        if node is None:
            return ""
        if isinstance(node, lark.Token):
            return str(node)
        assert isinstance(node, lark.Tree)
        if node.data == "scheduled":
            before, after = node.children[0], node.children[1]
            return text_at(before if step <= when(node) else after, step)
        if node.data == "alternate":
            return text_at(node.children[(step - 1) % len(node.children)], step)
        return "".join(text_at(child, step) for child in node.children)

    try:
        tree = _LARK.parse(text)
    except lark.exceptions.LarkError:
        return [(steps, text)]
    ends = {steps}
    for node in tree.iter_subtrees():
        if node.data == "scheduled" and when(node) >= 1:
            ends.add(when(node))
        if node.data == "alternate":
            ends.update(range(1, steps + 1))
    return [(end, text_at(tree, end)) for end in sorted(ends)]


@st.composite
def _prompts(draw: st.DrawFn, depth: int = 0) -> str:
    """Prompt-like text: words, weights, edits, alternations, escapes, lone stray brackets."""
    parts = []
    for _ in range(draw(st.integers(0, 3 if depth else 5))):
        # Stray brackets only at the top level, one at a time: next to each other (or inside
        # a bracket group, which then is not one) they make lark's parse ambiguous (below).
        kinds = ["word", "word", "escape"] + (["stray"] if not depth else [])
        kinds += ["group"] * 4 if depth < 3 else []
        kind = draw(st.sampled_from(kinds))
        if kind == "word":
            parts.append(draw(st.sampled_from(["a", "b c", " ", "1girl,", "0.5", "x y"])))
        elif kind == "escape":
            parts.append(draw(st.sampled_from(["\\(", "\\]", "\\\\"])))
        elif kind == "stray":  # one stray bracket between words, never a run of them
            parts.append("w" + draw(st.sampled_from(list("()[]:"))) + "w")
        else:
            inner = [draw(_prompts(depth + 1)) for _ in range(3)]
            when = draw(st.sampled_from(["3", "0.5", " 2 ", ".25", "1.5", "-1", "1e1", "0"]))
            parts.append(
                draw(
                    st.sampled_from(
                        [
                            f"({inner[0]})",
                            f"({inner[0]}:1.2)",
                            f"[{inner[0]}]",
                            f"[{inner[0]}:{inner[1]}:{when}]",
                            f"[{inner[0]}:{when}]",
                            f"[{inner[0]}::{when}]",
                            f"[{inner[0]}|{inner[1]}]",
                            f"[{inner[0]}|{inner[1]}|{inner[2]}]",
                        ]
                    )
                )
            )
    return "".join(parts)


@given(_prompts(), st.integers(1, 12))
@settings(max_examples=150, deadline=None)  # lark's Earley parser is the slow side here
def test_prompt_schedule_agrees_with_a1111_grammar(text: str, steps: int) -> None:
    assert prompt_schedule(text, steps) == _lark_schedule(text, steps)


def test_ambiguous_runs_of_stray_brackets_read_as_prompt_editing() -> None:
    # With a run of unmatched closers after an edit, lark's Earley parse is ambiguous and
    # A1111's pinned lark 1.1.2 picks a reading by set order, which changes between runs of
    # the web UI. We always take the prompt-editing reading.
    assert prompt_schedule("[a:2]]]", 4) == [(2, "]]"), (4, "a]]")]


@given(_texts(list("ab []():|.1\\\n") + ["0.5", ":2"]), st.integers(1, 30))
@settings(max_examples=300)
def test_prompt_schedule_never_raises(text: str, steps: int) -> None:
    schedule = prompt_schedule(text, steps)
    assert schedule[-1][0] == steps
    assert [end for end, _ in schedule] == sorted({end for end, _ in schedule})
