"""Prompt syntax, pure text: A1111 attention, NAI braces, prompt editing and alternation.

`parse_attention` is A1111's `parse_prompt_attention`; `to_a1111` / `to_nai` convert NAI braces
by weight; `prompt_schedule` resolves `[from:to:when]` and `[a|b]` per step as A1111 does.
`extra_networks` takes A1111's `<lora:…>`/`<hypernet:…>` tags out of a prompt. `engine.prompting`
re-exports these; `engine.prompting.conditioning` turns them into CLIP conditioning. Over
~500 lines because A1111's three grammars (attention, NAI braces, editing) share its lexer.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from engine.errors import PROMPT, InvalidRequest, Phrase

# --- Extra-network tags <lora:name:1> -------------------------------------------------------

# A1111 `modules/extra_networks.py` (v1.9.4) `re_extra_net`: any `<type:args>` tag.
_RE_EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")


def extra_networks(prompt: str) -> tuple[str, list[tuple[str, list[str]]]]:
    """A1111 `extra_networks.parse_prompt`: the prompt without its `<type:args>` tags (removed
    wherever they are, before anything else reads the prompt), and each tag's type and its
    `:`-separated arguments, in order. A1111 applies this to positive prompts only."""
    found: list[tuple[str, list[str]]] = []

    def take(match: re.Match[str]) -> str:
        found.append((match[1], match[2].split(":")))
        return ""

    return _RE_EXTRA_NETWORK.sub(take, prompt), found


# --- A1111 attention --------------------------------------------------------------------------

# A1111 `modules/prompt_parser.py` (v1.9.4) token regex, alternatives in A1111's order.
_RE_ATTENTION = re.compile(
    r"""
\\\(|\\\)|\\\[|\\]|\\\\|\\|   # escapes, then a lone backslash
\(|\[|
:\s*([+-]?[.\d]+)\s*\)|      # the closer of (text:weight)
\)|]|
[^\\()\[\]:]+|
:
""",
    re.X,
)
# The same, plus `{` `}` (NAI emphasis) and their escapes; braces are plain text to A1111.
_RE_EXTENDED = re.compile(
    r"""
\\[()\[\]\\{}]|\\|
[(\[{]|
:\s*([+-]?[.\d]+)\s*\)|
[)\]}]|
[^\\()\[\]{}:]+|
:
""",
    re.X,
)
_RE_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)

ROUND = 1.1
SQUARE = 1 / 1.1
NAI_CURLY = 1.05
NAI_SQUARE = 1 / 1.05
SYNTAXES = ("a1111", "nai")
BREAK = ("BREAK", -1.0)
# A1111 `sd_emphasis` modes: "None" does not parse brackets at all, "Ignore" drops the weights.
EMPHASIS_MODES = ("Original", "No norm", "Ignore", "None")


def parse_attention(text: str) -> list[tuple[str, float]]:
    """A1111 `parse_prompt_attention`: (text, weight) pairs; BREAK is ("BREAK", -1).

    `(x)` ×1.1, `[x]` ÷1.1, `(x:w)`, escapes `\\( \\) \\[ \\] \\\\`, unclosed brackets closed at
    the end, stray closers kept as text, runs of equal weight merged. Raises InvalidRequest
    when a weight is not a number (A1111 raises ValueError there).
    """
    return _weigh(text, syntax=None)


@dataclass(eq=False)  # compared and hashed by identity
class _Pair:
    """One bracket pair in a prompt: where it opens and closes and what it multiplies by."""

    kind: str  # "(", "[" or "{"
    open: int  # token index
    close: int | None  # token index; None = still open at the end
    multiplier: float
    converts: bool = False  # NAI emphasis that to_a1111 rewrites as (text:weight)
    scheduling: bool = False  # a [ ] holding a direct `:` or `|`: prompt editing, not emphasis


@dataclass
class _Lexed:
    tokens: list[re.Match[str]]
    pairs: list[_Pair]
    closer_of: dict[int, _Pair]  # token index → the pair it closes


def _lex(text: str, syntax: str | None) -> _Lexed:
    """Tokenize and match brackets the A1111 way: each closer pops its own kind's stack."""
    extended = syntax is not None
    tokens = list((_RE_EXTENDED if extended else _RE_ATTENTION).finditer(text))
    stacks: dict[str, list[_Pair]] = {"(": [], "[": [], "{": []}
    closers = {")": "(", "]": "[", "}": "{"}
    pairs: list[_Pair] = []
    closer_of: dict[int, _Pair] = {}
    # Innermost open pairs (any kind) decide what a `:` or `|` belongs to (NAI `[ ]`).
    open_now: list[_Pair] = []
    for i, m in enumerate(tokens):
        token = m.group(0)
        if token in stacks and (extended or token != "{"):
            pair = _Pair(token, i, None, _multiplier(token))
            pairs.append(pair)
            stacks[token].append(pair)
            open_now.append(pair)
        elif m.group(1) is not None and stacks["("]:
            pair = stacks["("].pop()
            pair.close, pair.multiplier = i, _weight(m.group(1), token)
            closer_of[i] = pair
            open_now.remove(pair)
        elif token in closers and (extended or token != "}") and stacks[closers[token]]:
            pair = stacks[closers[token]].pop()
            pair.close = i
            closer_of[i] = pair
            open_now.remove(pair)
        elif (":" in token or "|" in token) and open_now and open_now[-1].kind == "[":
            open_now[-1].scheduling = True
    if syntax is not None:
        for pair in pairs:
            if pair.kind == "{":
                pair.converts = True
            elif pair.kind == "[" and syntax == "nai" and not pair.scheduling:
                pair.multiplier, pair.converts = NAI_SQUARE, True
    return _Lexed(tokens, pairs, closer_of)


def _multiplier(opener: str) -> float:
    return {"(": ROUND, "[": SQUARE, "{": NAI_CURLY}[opener]


def _weight(number: str, token: str) -> float:
    try:
        weight = float(number)
    except ValueError:
        raise InvalidRequest(
            f"The weight in {token!r} is not a number: write weights like (word:1.2).",
            field="prompt",
            key="weight_not_number",
            token=token,
        ) from None
    if not math.isfinite(weight):
        raise InvalidRequest(
            f"The weight in {token!r} is too large.",
            field="prompt",
            key="weight_too_large",
            token=token,
        )
    return weight


def _weigh(text: str, syntax: str | None) -> list[tuple[str, float]]:
    """A1111's weighting loop; with a syntax, `{ }` and NAI `[ ]` weigh too."""
    lexed = _lex(text, syntax)
    res: list[list[Any]] = []
    starts: dict[_Pair, int] = {}  # index into res where each pair opened
    opener_of = {pair.open: pair for pair in lexed.pairs}

    def multiply(start: int, multiplier: float) -> None:
        for p in range(start, len(res)):
            res[p][1] *= multiplier

    for i, m in enumerate(lexed.tokens):
        token = m.group(0)
        if token.startswith("\\"):
            res.append([token[1:], 1.0])
        elif i in opener_of:
            starts[opener_of[i]] = len(res)
        elif i in lexed.closer_of:
            pair = lexed.closer_of[i]
            multiply(starts[pair], pair.multiplier)
        else:
            for k, part in enumerate(_RE_BREAK.split(token)):
                if k > 0:
                    res.append(list(BREAK))
                res.append([part, 1.0])
    # A1111 closes what is still open at the end: round brackets first, then square.
    for kind in "([{":
        for pair in lexed.pairs:
            if pair.kind == kind and pair.close is None:
                multiply(starts[pair], pair.multiplier)
    if not res:
        res = [["", 1.0]]
    merged: list[list[Any]] = [res[0]]
    for item in res[1:]:
        if item[1] == merged[-1][1]:
            merged[-1][0] += item[0]
        else:
            merged.append(item)
    return [(str(t), float(w)) for t, w in merged]


def check_emphasis(emphasis: str) -> None:
    """InvalidRequest unless `emphasis` is one of A1111's emphasis modes."""
    if emphasis not in EMPHASIS_MODES:
        raise InvalidRequest(
            f"Unknown emphasis mode {emphasis!r}: use {', '.join(EMPHASIS_MODES)}.",
            field="emphasis",
            key="unknown_emphasis",
            emphasis=emphasis,
            modes=list(EMPHASIS_MODES),
        )


# Beyond this, weights only overflow (1.1^1900 is inf in float32, 1.1^100 = 13,781 already
# saturates fp16 after CLIP's outputs are scaled) and the picture comes out black.
MAX_WEIGHT = 100.0


def check_weights(text: str, steps: int, name: Phrase = PROMPT) -> None:
    """InvalidRequest if a weight in any scheduled form of `text` is beyond ±MAX_WEIGHT (nested
    brackets multiply: 49 pairs of `( )` are already 107)."""
    for _, scheduled in prompt_schedule(text, steps):
        for segment, weight in parse_attention(scheduled):
            if (segment, weight) != BREAK and not abs(weight) <= MAX_WEIGHT:
                shown = segment.strip()[:40] or segment[:40]
                raise InvalidRequest(
                    f"The weight of {shown!r} in the {name} is {weight:.3g}: weights must be "
                    f"from -{MAX_WEIGHT:g} to {MAX_WEIGHT:g} (nested brackets multiply).",
                    field="prompt",
                    key="weight_out_of_range",
                    text=shown,
                    name=name,
                    weight=weight,
                    max=MAX_WEIGHT,
                )


# --- NAI braces ↔ A1111 weights ---------------------------------------------------------------


def parse_weights(text: str, syntax: str = "a1111") -> list[tuple[str, float]]:
    """(text, weight) pairs of a prompt in our syntax: A1111's, plus `{x}` ×1.05 (NAI).

    "a1111": `[x]` ÷1.1 as A1111; "nai": `[x]` ÷1.05 as NovelAI. `[from:to:when]` and `[a|b]`
    are prompt editing in both (weighed here as A1111's parser weighs them).
    """
    _check_syntax(syntax)
    return _weigh(text, syntax)


def to_a1111(text: str, syntax: str = "a1111") -> str:
    """The A1111 prompt that weighs like `text` read in `syntax`: `{{x}}` → `(x:1.1025)`.

    Only NAI emphasis is rewritten; everything else (prompt editing, BREAK, escapes) is kept as
    written, so a prompt without braces (and, for "nai", without `[x]`) comes back unchanged.
    """
    _check_syntax(syntax)
    lexed = _lex(text, syntax)
    by_weight = {pair for pair in lexed.pairs if pair.converts}
    if not by_weight:
        return text
    converted = _rewrite(lexed, by_weight, {})
    if _same_weights(_weigh(converted, None), _weigh(text, syntax)):
        return converted
    # Brackets of different kinds crossing each other, e.g. `{a (b} c)`: write flat weights.
    return _flat(_weigh(text, syntax))


def to_nai(text: str) -> str:
    """The NAI-syntax prompt that weighs like A1111 `text`: `(x:1.1025)` → `{{x}}`.

    Weights that are powers of 1.05 become braces or NAI brackets; A1111's `[x]` (÷1.1) becomes
    `(x:0.9091)`, since `[x]` means ÷1.05 in NAI syntax; `( )` mean the same in both.
    """
    lexed = _lex(text, "a1111")
    by_weight = {p for p in lexed.pairs if p.kind == "[" and not p.scheduling}
    braces = {p: n for p in lexed.pairs if p.kind == "(" and (n := _power_of_105(p)) != 0}
    if not by_weight and not braces:
        return text
    converted = _rewrite(lexed, by_weight, braces)
    if _same_weights(_weigh(converted, "nai"), _weigh(text, "a1111")):
        return converted
    return _flat(_weigh(text, "a1111"))


def _power_of_105(pair: _Pair) -> int:
    """n where a closed pair's weight is 1.05**n (NAI braces), else 0."""
    if pair.close is None or pair.multiplier <= 0:
        return 0
    n = round(math.log(pair.multiplier) / math.log(NAI_CURLY))
    return n if 0 < abs(n) <= 8 and abs(NAI_CURLY**n - pair.multiplier) < 5e-5 else 0


def _rewrite(lexed: _Lexed, by_weight: set[_Pair], braces: dict[_Pair, int]) -> str:
    """Write pairs in `by_weight` as `(…:w)`, folding directly nested ones (`{{x}}` →
    `(x:1.1025)`), and pairs in `braces` as n braces (n > 0) or NAI brackets (n < 0)."""
    pairs = [p for p in lexed.pairs if p in by_weight]
    by_open = {p.open: p for p in pairs}
    folded: set[_Pair] = set()
    weight: dict[_Pair, float] = {}
    for pair in pairs:  # in opening order: an outer pair comes before the ones it folds in
        if pair in folded:
            continue
        total, outer, inner = pair.multiplier, pair, by_open.get(pair.open + 1)
        while inner is not None and _directly_inside(outer, inner):
            folded.add(inner)
            total *= inner.multiplier
            outer, inner = inner, by_open.get(inner.open + 1)
        weight[pair] = total

    def write(pair: _Pair, opening: bool) -> str:
        if pair not in by_weight and pair not in braces:
            return lexed.tokens[pair.open if opening else pair.close or 0].group(0)
        if pair in braces:
            n = braces[pair]
            return ("{" if opening else "}") * n if n > 0 else ("[" if opening else "]") * -n
        if pair in folded:
            return ""
        return "(" if opening else f":{format_weight(weight[pair])})"

    opener_of = {p.open: p for p in lexed.pairs}
    out: list[str] = []
    for i, m in enumerate(lexed.tokens):
        found = opener_of.get(i) or lexed.closer_of.get(i)
        out.append(m.group(0) if found is None else write(found, opening=found.open == i))
    # Still open at the end: close the first rewritten pair and everything opened after it.
    unclosed = [p for p in lexed.pairs if p.close is None]
    first = next((k for k, p in enumerate(unclosed) if p in by_weight), None)
    if first is not None:
        for pair in reversed(unclosed[first:]):
            if pair in by_weight:
                out.append(write(pair, opening=False))
            else:
                out.append({"(": ")", "[": "]", "{": "}"}[pair.kind])
    return "".join(out)


def _directly_inside(outer: _Pair, inner: _Pair) -> bool:
    """`inner` (opening right after `outer`) also closes right before it, or both stay open."""
    if outer.close is None or inner.close is None:
        return outer.close is None and inner.close is None
    return inner.close + 1 == outer.close


def format_weight(weight: float) -> str:
    """A weight as users write it: 1.1025, 0.9524, 1.2 (four decimals at most)."""
    text = f"{weight:.4f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _flat(segments: list[tuple[str, float]]) -> str:
    out = []
    for text, weight in segments:
        if (text, weight) == BREAK:
            out.append(" BREAK ")
        elif text:
            escaped = re.sub(r"([\\()\[\]{}])", r"\\\1", text)
            out.append(escaped if weight == 1.0 else f"({escaped}:{format_weight(weight)})")
    return "".join(out)


def _same_weights(a: list[tuple[str, float]], b: list[tuple[str, float]]) -> bool:
    """Same characters with the same weights, allowing for four-decimal rounding."""
    chars_a = [(c, w) for text, w in a for c in text]
    chars_b = [(c, w) for text, w in b for c in text]
    return len(chars_a) == len(chars_b) and all(
        ca == cb and math.isclose(wa, wb, rel_tol=1e-3, abs_tol=1e-4)
        for (ca, wa), (cb, wb) in zip(chars_a, chars_b, strict=True)
    )


def _check_syntax(syntax: str) -> None:
    if syntax not in SYNTAXES:
        raise InvalidRequest(
            f"Unknown prompt syntax {syntax!r}: use {' or '.join(SYNTAXES)}.",
            field="syntax",
            key="unknown_syntax",
            syntax=syntax,
            choices=list(SYNTAXES),
        )


# --- Prompt editing [from:to:when] and alternation [a|b] ---------------------------------------

# lark's SIGNED_NUMBER, which A1111's schedule grammar uses for `when`.
_RE_WHEN = re.compile(r"\s*([+-]?(?:\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?))\s*")
_MAX_DEPTH = 64  # deeper bracket nesting is read as plain text


@dataclass(frozen=True)
class _Scheduled:
    before: tuple[_Node, ...] | None
    after: tuple[_Node, ...]
    when: str


@dataclass(frozen=True)
class _Alternate:
    options: tuple[tuple[_Node, ...], ...]


_Node = str | _Scheduled | _Alternate


def prompt_schedule(text: str, steps: int, hires_steps: int | None = None) -> list[tuple[int, str]]:
    """A1111's prompt schedule [(last step, prompt)]: `a [b:3]`, 10 → [(3, "a "), (10, "a b")].

    Same results as A1111's lark grammar (`get_learned_conditioning_prompt_schedules`):
    `[to:when]`, `[from::when]`, `[from:to:when]` with `when` a step, or a fraction of
    `steps` if it has a `.`; `[a|b|…]` cycles every step. Step s (0-based) of sampling uses the
    first entry whose last step is ≥ s. Text that does not parse is returned unchanged.
    With `hires_steps` (the hires pass), the schedule is that pass's: a step `when` counts
    on from the first pass's `steps`, a fraction runs from 1 to 2 over the hires steps.
    """
    timeline = _Timeline(steps) if hires_steps is None else _Timeline(hires_steps, steps, 1.0)
    steps = timeline.steps
    if "[" not in text:  # nothing to schedule (and the parse could only keep the text as is)
        return [(steps, text)]
    nodes = _parse_schedule(text)
    if nodes is None:
        return [(steps, text)]
    ends = {steps}
    _collect_steps(nodes, timeline, ends)
    return [(end, _text_at(nodes, end, timeline)) for end in sorted(ends)]


@dataclass(frozen=True)
class _Timeline:
    """The steps a schedule spans and A1111's offsets (`int_offset`, `flt_offset`: the first
    pass's steps and 1.0 for a hires pass, 0 otherwise)."""

    steps: int
    int_offset: int = 0
    flt_offset: float = 0.0


def _parse_schedule(text: str) -> tuple[_Node, ...] | None:
    """The top level of A1111's grammar: stray brackets and colons are text; a `|` outside an
    alternation, or a trailing backslash, fails the whole parse (A1111 then keeps the text)."""
    n = len(text)
    memo: dict[int, tuple[int, tuple[_Node, ...]] | None] = {}

    def group(i: int, depth: int) -> tuple[int, tuple[_Node, ...]] | None:
        """A bracket group opening at text[i]: (end, nodes), or None if it is not one."""
        if i in memo:
            return memo[i]
        memo[i] = result = None if depth > _MAX_DEPTH else _group(i, depth)
        return result

    def _group(i: int, depth: int) -> tuple[int, tuple[_Node, ...]] | None:
        opener = text[i]
        closer = ")" if opener == "(" else "]"
        parts: list[list[_Node]] = [[]]
        separators: list[str] = []
        j = i + 1
        while j < n:
            c = text[j]
            if c == "\\":
                if j + 1 >= n or text[j + 1] == "\n":
                    return None
                parts[-1].append(text[j : j + 2])
                j += 2
            elif c in "([":
                sub = group(j, depth + 1)
                if sub is None:
                    return None
                j, nodes = sub
                parts[-1].extend(nodes)
            elif c == closer:
                classified = _classify(opener, parts, separators)
                return None if classified is None else (j + 1, classified)
            elif c in ")]":
                return None
            elif c in ":|":
                separators.append(c)
                parts.append([])
                j += 1
            else:
                k = j + 1
                while k < n and text[k] not in "\\()[]:|":
                    k += 1
                parts[-1].append(text[j:k])
                j = k
        return None

    def _classify(
        opener: str, parts: list[list[_Node]], separators: list[str]
    ) -> tuple[_Node, ...] | None:
        if opener == "(":
            if "|" in separators or len(separators) > 1:
                return None
            return ("(", *_join(parts, ":"), ")")
        if not separators:
            return ("[", *parts[0], "]")
        if set(separators) == {"|"}:
            return (_Alternate(tuple(tuple(p) for p in parts)),)
        if "|" in separators or len(separators) > 2:
            return None
        if not all(isinstance(x, str) for x in parts[-1]):
            return None
        number = _RE_WHEN.fullmatch("".join(str(x) for x in parts[-1]))
        if number is None:
            return None
        before = tuple(parts[0]) if len(parts) == 3 else None
        return (_Scheduled(before, tuple(parts[-2]), number.group(1)),)

    out: list[_Node] = []
    j = 0
    while j < n:
        c = text[j]
        if c == "\\":
            if j + 1 >= n or text[j + 1] == "\n":
                return None
            out.append(text[j : j + 2])
            j += 2
        elif c in "([":
            sub = group(j, 0)
            if sub is None:
                out.append(c)
                j += 1
            else:
                j, nodes = sub
                out.extend(nodes)
        elif c == "|":
            return None
        else:
            k = j + 1
            while k < n and text[k] not in "\\([|":
                k += 1
            out.append(text[j:k])
            j = k
    return tuple(out)


def _join(parts: list[list[_Node]], separator: str) -> list[_Node]:
    joined: list[_Node] = list(parts[0])
    for part in parts[1:]:
        joined.append(separator)
        joined.extend(part)
    return joined


def _when(node: _Scheduled, timeline: _Timeline) -> int:
    """The last step of `before` (A1111: `min(steps, int(v))`, v a fraction if it has a `.`)."""
    steps = timeline.steps
    value = float(node.when)
    if "." in node.when:
        value = (value - timeline.flt_offset) * steps
    else:
        value -= timeline.int_offset
    if math.isinf(value):
        return steps if value > 0 else -1
    return min(steps, int(value))


def _collect_steps(nodes: Sequence[_Node], timeline: _Timeline, ends: set[int]) -> None:
    for node in nodes:
        if isinstance(node, _Scheduled):
            when = _when(node, timeline)
            if when >= 1:
                ends.add(when)
            _collect_steps(node.before or (), timeline, ends)
            _collect_steps(node.after, timeline, ends)
        elif isinstance(node, _Alternate):
            ends.update(range(1, timeline.steps + 1))
            for option in node.options:
                _collect_steps(option, timeline, ends)


def _text_at(nodes: Sequence[_Node], step: int, timeline: _Timeline) -> str:
    out = []
    for node in nodes:
        if isinstance(node, str):
            out.append(node)
        elif isinstance(node, _Scheduled):
            chosen = (node.before or ()) if step <= _when(node, timeline) else node.after
            out.append(_text_at(chosen, step, timeline))
        else:
            out.append(_text_at(node.options[(step - 1) % len(node.options)], step, timeline))
    return "".join(out)
