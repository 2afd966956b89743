"""The rules language: a small, safe expression language for alert conditions.

A condition such as ``avg(temperature, 10m) > 60 and humidity < 20`` is parsed by an LALR parser
(lark, the grammar below) into a tree, checked (names, function arities, types, size), and
compiled into numpy closures that evaluate it over whole columns of readings at once. Nothing the
user writes is ever handed to ``eval``/``exec`` or used to look up a Python attribute: names are
only keys of the columns the caller passes, and functions come from a fixed table.

Values are float arrays; NaN means unknown. Conditions are float arrays of 1.0 (true), 0.0
(false) and NaN (unknown) combined with Kleene logic; ``Expression.evaluate`` returns
``value == 1.0``, so an unknown condition never breaks a rule. docs/rule-expressions.md describes
the language for operators.
"""

from __future__ import annotations

import difflib
import keyword
import re
import unicodedata
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken

MAX_LENGTH = 2000
MAX_DEPTH = 32
MAX_NODES = 200
MAX_NUMBER = 1e12
MAX_NUMBER_CHARS = 32
MIN_WINDOW_SECONDS = 1.0
MAX_WINDOW_SECONDS = 30 * 86400.0
MAX_SCALAR_ARGS = 8

GRAMMAR = r"""
?start: or_test

?or_test: and_test ("or" and_test)*
?and_test: not_test ("and" not_test)*
?not_test: negation | comparison
negation: NOT not_test
?comparison: sum (_comparison_op sum)*
_comparison_op: LT | LE | GT | GE | EQ | NE
?sum: product (_add_op product)*
_add_op: PLUS | MINUS
?product: unary (_mul_op unary)*
_mul_op: STAR | SLASH
?unary: negative | atom
negative: MINUS unary
?atom: NUMBER
     | NAME
     | call
     | "(" or_test ")"
call: NAME "(" [arguments] ")"
arguments: or_test ("," or_test)*

NOT: "not"
LT: "<"
LE: "<="
GT: ">"
GE: ">="
EQ: "=="
NE: "!="
PLUS: "+"
MINUS: "-"
STAR: "*"
SLASH: "/"
// A number, optionally followed by a unit (10m): durations, and mistakes such as 5min or 1and,
// are one token so that they can be explained instead of misread.
NUMBER: /(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?(?:[A-Za-z_][A-Za-z0-9_]*)?/
NAME: /[A-Za-z_][A-Za-z0-9_]*/
WS: /[ \t\r\n]+/
%ignore WS
"""

_PARSER = Lark(
    GRAMMAR,
    parser="lalr",
    lexer="basic",
    propagate_positions=True,
    maybe_placeholders=True,
)

METRIC_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_SECONDS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_BAD_CHARACTER = re.compile(r"[^\t\n\r\x20-\x7e]")

SCALAR_FUNCTIONS = frozenset({"abs", "min", "max"})
# Window functions: (window allowed, window required).
WINDOW_FUNCTIONS: dict[str, tuple[bool, bool]] = {
    "avg": (True, True),
    "stddev": (True, True),
    "zscore": (True, True),
    "rate": (True, False),
    "delta": (False, False),
}
FUNCTIONS = SCALAR_FUNCTIONS | frozenset(WINDOW_FUNCTIONS)
# Window functions whose result reads on the metric's own scale (a chart can draw their limit).
_ON_THE_VALUE_SCALE = frozenset({"avg"})
_FUNCTION_LIST = ", ".join(sorted(FUNCTIONS))
_WINDOW_EXAMPLES = {
    "avg": "avg(temperature, 10m)",
    "stddev": "stddev(temperature, 1h)",
    "zscore": "zscore(temperature, 1h)",
    "rate": "rate(temperature) or rate(temperature, 5m)",
    "delta": "delta(temperature)",
}
_BOOLEAN_WORDS = frozenset({"true", "false", "none"})
# Python's keywords are refused as names, so that nothing that reads like code passes as a metric.
_RESERVED = frozenset(k.lower() for k in keyword.kwlist) - {"and", "or", "not"} - _BOOLEAN_WORDS

_OPERATOR_TERMINALS = frozenset(
    {"PLUS", "MINUS", "STAR", "SLASH", "LT", "LE", "GT", "GE", "EQ", "NE", "AND", "OR"}
)
_CONDITION_EXAMPLE = "e.g. temperature > 80"


class ExpressionError(ValueError):
    """A condition the rules language refuses; `position` is a 0-based offset into the text."""

    def __init__(self, message: str, position: int, source: str = "") -> None:
        self.message = message
        self.position = position
        self.source = source
        super().__init__(f"{message} (at character {position})")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.message, self.position, self.source))

    def pointer(self) -> str:
        """The line of the source holding the position and a caret under it (for forms and logs)."""
        text = self.source
        start = text.rfind("\n", 0, self.position) + 1
        end = text.find("\n", self.position)
        line = text[start : end if end >= 0 else len(text)]
        column = self.position - start
        # Keep long lines readable: a window of the line around the position.
        if len(line) > 80:
            left = max(0, column - 40)
            shown = line[left : left + 80]
            prefix = "..." if left else ""
            suffix = "..." if left + 80 < len(line) else ""
            line = prefix + shown + suffix
            column = column - left + len(prefix)
        line = _BAD_CHARACTER.sub("?", line.replace("\t", " ").replace("\r", " "))
        return f"{line}\n{' ' * column}^"


@dataclass(frozen=True)
class WindowTerm:
    """A window function over one metric: what the engine computes and passes as a column."""

    function: str
    metric: str
    window: float | None = None

    @property
    def key(self) -> str:
        """Canonical column key, e.g. ``avg(temperature,600)`` or ``rate(temperature)``."""
        if self.window is None:
            return f"{self.function}({self.metric})"
        return f"{self.function}({self.metric},{_plain_number(self.window)})"

    def describe(self) -> str:
        if self.window is None:
            return f"{self.function}({self.metric})"
        return f"{self.function}({self.metric}, {format_duration(self.window)})"

    def __str__(self) -> str:
        return self.describe()


class Expression:
    """A parsed, checked and compiled condition. Build it with `parse`."""

    def __init__(self, source: str, root: _Node) -> None:
        self.source = source
        self._root = root
        metrics: set[str] = set()
        inputs: dict[str, None] = {}
        terms: dict[WindowTerm, None] = {}
        functions: set[str] = set()
        connectives: set[str] = set()
        comparisons = 0
        for node in root.walk():
            if isinstance(node, _Comparison):
                comparisons += len(node.ops)
            elif isinstance(node, _Logic):
                connectives.add(node.word)
            elif isinstance(node, _Not):
                connectives.add("not")
            if isinstance(node, _Metric):
                metrics.add(node.name)
                inputs[node.name] = None
            elif isinstance(node, _Term):
                metrics.add(node.term.metric)
                functions.add(node.term.function)
                terms[node.term] = None
                inputs[node.term.key] = None
            elif isinstance(node, _Call):
                functions.add(node.function)
        self.metrics: frozenset[str] = frozenset(metrics)
        self.terms: tuple[WindowTerm, ...] = tuple(terms)
        self.functions: frozenset[str] = frozenset(functions)
        # How many comparisons (1 < x < 5 counts two) and which of and/or/not the condition uses.
        self.comparisons: int = comparisons
        self.connectives: frozenset[str] = frozenset(connectives)
        # The column keys `evaluate` reads: bare metric names and window-term keys.
        self.inputs: tuple[str, ...] = tuple(inputs)
        self._run = root.compile()

    def evaluate(self, columns: Mapping[str, Any]) -> np.ndarray:
        """Whether the condition holds at each row of `columns` (a bool array).

        `columns` maps each key in `self.inputs` (metric names and `WindowTerm.key`s) to a float
        array, all of one length; NaN is an unknown value, and a row whose condition is unknown
        does not break the rule.
        """
        prepared: dict[str, np.ndarray] = {}
        length: int | None = None
        for key in self.inputs:
            try:
                column = columns[key]
            except KeyError:
                given = ", ".join(sorted(map(str, columns))) or "none"
                raise KeyError(
                    f"the condition {self.describe()!r} reads {key!r}, but no column {key!r} was "
                    f"passed to evaluate() (columns given: {given})"
                ) from None
            array = np.asarray(column, dtype=np.float64)
            if array.ndim != 1 or (length is not None and array.shape[0] != length):
                raise ValueError(
                    f"column {key!r} must be a 1-D array of the same length as the others"
                )
            length = array.shape[0]
            prepared[key] = array
        with np.errstate(all="ignore"):
            result = np.asarray(self._run(prepared)) == 1.0
        if result.shape != (length,):
            result = np.broadcast_to(result, (length or 0,)).copy()
        return result

    def describe(self) -> str:
        """The canonical form, e.g. ``temperature > 80 and avg(humidity, 10m) < 20``."""
        return self._root.describe()

    def thresholds(self) -> list[tuple[str, str, float, str]]:
        """The condition's comparisons of a metric (bare, or in a window function) with a
        constant, as (metric, operator, value, what is compared): `temperature > 80` gives
        ("temperature", ">", 80.0, "temperature"); `5 < avg(t, 10m)` gives
        ("t", ">", 5.0, "avg(t, 10m)"), the metric always on the left. Charts draw them, so
        functions whose result is not on the metric's scale (a rate, a z-score) are left out."""
        flipped = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "!=": "!="}
        found: list[tuple[str, str, float, str]] = []
        for node in self._root.walk():
            if not isinstance(node, _Comparison):
                continue
            for index, op in enumerate(node.ops):
                left, right = node.operands[index], node.operands[index + 1]
                for side, other, operator in ((left, right, op), (right, left, flipped[op])):
                    value = other.constant()
                    if value is None:
                        continue
                    if isinstance(side, _Metric):
                        found.append((side.name, operator, float(value), side.describe()))
                    elif isinstance(side, _Term) and side.term.function in _ON_THE_VALUE_SCALE:
                        found.append((side.term.metric, operator, float(value), side.describe()))
        return found

    def __str__(self) -> str:
        return self.describe()

    def __repr__(self) -> str:
        return f"<Expression {self.describe()}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Expression) and self.describe() == other.describe()

    def __hash__(self) -> int:
        return hash(self.describe())


def parse(text: str, metrics: Collection[str] | None = None) -> Expression:
    """Parse and check a condition; with `metrics`, names the device type lacks are refused.

    Raises ExpressionError (message and position) for anything the language does not allow.
    """
    if not isinstance(text, str):
        raise TypeError("a condition is text")
    known = None if metrics is None else frozenset(metrics)
    return _parse_cached(text, known)


@lru_cache(maxsize=2048)
def _parse_cached(text: str, metrics: frozenset[str] | None) -> Expression:
    return _Checker(text, metrics).expression()


def format_duration(seconds: float) -> str:
    """The shortest way to write a window: 600 -> "10m", 90 -> "90s", 86400 -> "1d"."""
    for unit in ("d", "h", "m", "s"):
        count = seconds / _UNIT_SECONDS[unit]
        if count >= 1 and float(count).is_integer():
            return f"{int(count)}{unit}"
    return f"{_plain_number(seconds)}s"


def _plain_number(value: float) -> str:
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


# --- checking ------------------------------------------------------------------------------------

Columns = Mapping[str, np.ndarray]
Compiled = Callable[[Columns], Any]


class _Checker:
    """Runs every check in order and builds the tree; the first problem found is raised."""

    def __init__(self, text: str, metrics: frozenset[str] | None) -> None:
        self.text = text
        self.metrics = metrics
        self.tokens: list[Token] = []

    def fail(self, message: str, position: int) -> ExpressionError:
        position = max(0, min(position, len(self.text)))
        return ExpressionError(message, position, self.text)

    def expression(self) -> Expression:
        self.check_text()
        self.check_tokens()
        self.check_nesting()
        tree = self.parse_tree()
        self.check_size(tree)
        root = self.build(tree)
        if root.kind != "condition":
            raise self.fail(
                f"a condition must compare, {_CONDITION_EXAMPLE} "
                f"('{root.describe()}' is a {root.kind}, not true or false)",
                root.pos,
            )
        if not any(isinstance(n, _Metric | _Term) for n in root.walk()):
            raise self.fail(
                "the condition reads no metric, so it would always or never hold: compare a "
                f"metric, {_CONDITION_EXAMPLE}",
                root.pos,
            )
        return Expression(self.text, root)

    # Text as a whole -----------------------------------------------------------------------------

    def check_text(self) -> None:
        text = self.text
        if not text.strip():
            raise self.fail(f"the condition is empty: write one, {_CONDITION_EXAMPLE}", 0)
        if len(text) > MAX_LENGTH:
            raise self.fail(
                f"the condition is {len(text)} characters long; the limit is {MAX_LENGTH}: "
                "split it into several rules",
                MAX_LENGTH,
            )
        bad = _BAD_CHARACTER.search(text)
        if bad:
            char = bad.group()
            code = f"U+{ord(char):04X}"
            name = unicodedata.name(char, "")
            if ord(char) < 0x20 or 0x7F <= ord(char) < 0xA0:
                message = f"control character {code} is not allowed in a condition"
            elif char.isspace():
                message = f"unusual space character {code} {name}: use a plain space"
            else:
                message = (
                    f"non-ASCII character '{char}' ({code} {name}) is not allowed: write metric "
                    "names with plain letters a-z, digits and '_'"
                )
            raise self.fail(message, bad.start())

    # Tokens --------------------------------------------------------------------------------------

    def check_tokens(self) -> None:
        """Lex the whole text and explain the first token the language does not have."""
        previous: Token | None = None
        try:
            for token in _PARSER.lex(self.text):
                if token.type == "NAME":
                    self.check_name(token)
                elif token.type == "NUMBER":
                    self.check_number(token)
                elif token.type == "LPAR" and previous is not None and previous.type == "NAME":
                    self.check_function_name(previous)
                self.tokens.append(token)
                previous = token
        except UnexpectedCharacters as error:
            raise self.character_error(error.pos_in_stream) from None

    def character_error(self, pos: int) -> ExpressionError:
        text = self.text
        char = text[pos]
        pair = text[pos : pos + 2]
        if char in "'\"`":
            message = (
                "quotes are not allowed: the rules language has no strings; compare numbers, "
                f"{_CONDITION_EXAMPLE}"
            )
        elif char == ".":
            message = (
                "'.' may only be a decimal point inside a number (0.5); attribute access such as "
                "x.y is not part of the rules language"
            )
        elif char in "[]":
            message = "'[' and ']' are not allowed: the rules language has no lists or subscripts"
        elif char in "{}":
            message = "'{' and '}' are not allowed: the rules language has no sets or dicts"
        elif char == ";":
            message = "';' is not allowed: a condition is one expression, not statements"
        elif pair in ("=<", "=>"):
            message = f"write '{pair[::-1]}' instead of '{pair}'"
        elif pair == ":=" or char == "=":
            message = "'=' alone is an assignment, which conditions cannot make: compare with =="
        elif char == ":":
            message = "':' is not allowed: the rules language has no lambdas, slices or blocks"
        elif char == "!":
            message = "'!' is not an operator: write not (and != for 'is not equal to')"
        elif char == "&":
            message = f"'{'&&' if pair == '&&' else '&'}' is not an operator: write and"
        elif char == "|":
            message = f"'{'||' if pair == '||' else '|'}' is not an operator: write or"
        elif char == "%":
            message = "'%' (remainder) is not supported: use + - * / and the functions"
        elif char == "^":
            message = "'^' is not supported: there is no power operator; multiply, e.g. x * x"
        elif char == "#":
            message = "'#' is not allowed: conditions cannot hold comments (use the description)"
        elif char == "\\":
            message = "'\\' is not allowed in a condition"
        else:
            message = (
                f"'{char}' is not part of the rules language: use metric names, numbers, "
                "( ), + - * /, comparisons (< <= > >= == !=), and, or, not and the functions "
                f"{_FUNCTION_LIST}"
            )
        return self.fail(message, pos)

    def check_name(self, token: Token) -> None:
        name = str(token)
        lower = name.lower()
        if name.startswith("_"):
            kind = "dunder names like __class__ are" if name.startswith("__") else "'_' is"
            raise self.fail(
                f"'{name}' is not allowed: names start with a letter ({kind} never allowed)",
                token.start_pos,
            )
        if lower in {"and", "or", "not"}:
            raise self.fail(f"write '{lower}' in lower case, not '{name}'", token.start_pos)
        if lower in _BOOLEAN_WORDS:
            raise self.fail(
                f"'{name}' is not a value in the rules language: conditions are true or false by "
                "comparing, e.g. door_open == 1",
                token.start_pos,
            )
        if lower in ("is", "in"):
            raise self.fail(
                f"'{lower}' is not an operator here: compare with == or !=", token.start_pos
            )
        if lower in _RESERVED:
            raise self.fail(
                f"'{name}' is not part of the rules language: a condition is one expression of "
                f"metrics, numbers, operators and the functions {_FUNCTION_LIST}",
                token.start_pos,
            )
        if name != lower:
            raise self.fail(
                f"names are lower case: write '{lower}' instead of '{name}'", token.start_pos
            )
        if not METRIC_NAME.match(name):
            raise self.fail(
                f"'{name[:20]}...' is too long for a metric name (at most 63 characters)",
                token.start_pos,
            )

    def check_function_name(self, token: Token) -> None:
        name = str(token)
        if name in FUNCTIONS:
            return
        if self.metrics is not None and name in self.metrics:
            message = f"'{name}' is a metric, not a function: functions are {_FUNCTION_LIST}"
        else:
            message = f"unknown function '{name}': use one of {_FUNCTION_LIST}"
            close = difflib.get_close_matches(name, sorted(FUNCTIONS), n=1)
            if close:
                message += f" (did you mean '{close[0]}'?)"
        raise self.fail(message, token.start_pos)

    def check_number(self, token: Token) -> None:
        text = str(token)
        if len(text) > MAX_NUMBER_CHARS:
            raise self.fail(
                f"a number may have at most {MAX_NUMBER_CHARS} characters "
                f"('{text[:12]}...' has {len(text)})",
                token.start_pos,
            )
        match = re.match(r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?", text)
        assert match is not None  # the NUMBER terminal starts with exactly this
        digits, unit = match.group(), text[match.end() :]
        if unit:
            self.check_unit(token, digits, unit)
            return
        value = float(digits)
        if not abs(value) <= MAX_NUMBER:
            raise self.fail(
                f"the number {digits} is too large: numbers must lie between -1e12 and 1e12",
                token.start_pos,
            )

    def check_unit(self, token: Token, digits: str, unit: str) -> None:
        text = str(token)
        if unit.lower() in {"and", "or", "not"}:
            raise self.fail(
                f"put a space between the number {digits} and '{unit}'",
                token.start_pos + len(digits),
            )
        if unit.startswith("_") and unit.strip("_").isdigit():
            raise self.fail(
                f"write numbers without '_' separators, e.g. {text.replace('_', '')}",
                token.start_pos,
            )
        if unit.startswith("_"):
            raise self.fail(
                f"'{text}' is not a number: names after a number (such as '{unit}') are not "
                "allowed",
                token.start_pos + len(digits),
            )
        duration = _DURATION.match(text)
        if not duration:
            raise self.fail(
                f"'{text}' is neither a number nor a duration: durations are a number and one of "
                "s, m, h, d, e.g. 30s, 10m, 2h, 7d",
                token.start_pos,
            )
        seconds = float(duration.group(1)) * _UNIT_SECONDS[duration.group(2)]
        if not MIN_WINDOW_SECONDS <= seconds <= MAX_WINDOW_SECONDS:
            raise self.fail(
                f"the window {text} is out of bounds: use between 1s and 30d", token.start_pos
            )

    # Structure -----------------------------------------------------------------------------------

    def check_nesting(self) -> None:
        """Balanced parentheses, and nesting bounded before the parser builds a tree of it."""
        open_at: list[int] = []
        prefixes = 0  # consecutive prefix operators: - - - x, not not x
        previous: Token | None = None
        for token in self.tokens:
            is_prefix = token.type == "NOT" or (
                token.type == "MINUS"
                and (previous is None or previous.type not in ("NAME", "NUMBER", "RPAR"))
            )
            prefixes = prefixes + 1 if is_prefix else 0
            previous = token
            if prefixes > MAX_DEPTH:
                raise self.fail(
                    f"more than {MAX_DEPTH} '-' or 'not' in a row: simplify the condition",
                    token.start_pos,
                )
            if token.type == "LPAR":
                open_at.append(token.start_pos)
                if len(open_at) > MAX_DEPTH:
                    raise self.fail(
                        f"parentheses are nested more than {MAX_DEPTH} deep: simplify the "
                        "condition or split it into several rules",
                        token.start_pos,
                    )
            elif token.type == "RPAR":
                if not open_at:
                    raise self.fail(
                        "unmatched ')': there is no '(' for it to close", token.start_pos
                    )
                open_at.pop()
        if open_at:
            raise self.fail("'(' is never closed: add a ')'", open_at[-1])

    def parse_tree(self) -> Tree | Token:
        try:
            return _PARSER.parse(self.text)
        except UnexpectedToken as error:
            raise self.token_error(error) from None
        except UnexpectedInput as error:  # pragma: no cover - the lexing pass explains these
            raise self.fail("the condition cannot be read here", error.pos_in_stream or 0) from None

    def token_error(self, error: UnexpectedToken) -> ExpressionError:
        found = error.token
        at_end = found.type == "$END"
        pos = len(self.text.rstrip()) if at_end else found.start_pos
        before = [t for t in self.tokens if t.end_pos is not None and t.end_pos <= pos]
        previous = before[-1] if before else None
        if previous is not None and not at_end and previous.end_pos == found.start_pos:
            pair = previous.value + found.value
            if pair == "**":
                return self.fail(
                    "'**' (power) is not supported: multiply instead, e.g. x * x",
                    previous.start_pos,
                )
            if pair == "<>":
                return self.fail("'<>' is not an operator: write != for 'is not equal to'", pos)
        expected = set(error.expected)
        # LALR merges states, so the parser may offer ')' or ',' where they cannot go.
        groups: list[bool] = []  # for each open '(': whether it opens a function's arguments
        for index, token in enumerate(before):
            if token.type == "LPAR":
                groups.append(index > 0 and before[index - 1].type == "NAME")
            elif token.type == "RPAR" and groups:
                groups.pop()
        if not groups:
            expected -= {"RPAR", "COMMA"}
        else:
            expected -= {"$END"}
            if not groups[-1]:
                expected -= {"COMMA"}
        expected_words = _expected_words(expected)
        where = f"after '{previous.value}'" if previous is not None else "at the start"
        if at_end:
            return self.fail(
                f"expected {expected_words} {where}, but the condition ends there", pos
            )
        return self.fail(f"expected {expected_words} {where}, but found '{found.value}'", pos)

    def check_size(self, tree: Tree | Token) -> None:
        """Depth and size of the parse tree, measured without recursion."""
        nodes = 0
        stack: list[tuple[Tree | Token | None, int]] = [(tree, 1)]
        while stack:
            node, depth = stack.pop()
            if isinstance(node, Token):
                if node.type in ("NUMBER", "NAME"):
                    nodes += 1
            elif isinstance(node, Tree):
                if node.data == "arguments":
                    depth -= 1
                else:
                    nodes += 1
                if depth > MAX_DEPTH:
                    raise self.fail(
                        f"the condition is nested more than {MAX_DEPTH} levels deep: simplify it",
                        _start(node),
                    )
                children = node.children[1:] if node.data == "call" else node.children
                stack.extend((child, depth + 1) for child in children)
            if nodes > MAX_NODES:
                raise self.fail(
                    f"the condition is too long (more than {MAX_NODES} terms): split it into "
                    "several rules",
                    _start(node) if node is not None else 0,
                )

    # Tree ----------------------------------------------------------------------------------------

    def build(self, node: Tree | Token) -> _Node:
        """Turn the (depth-checked) parse tree into checked, typed nodes."""
        if isinstance(node, Token):
            if node.type == "NUMBER":
                text = str(node)
                if text[-1].isalpha():
                    duration = _DURATION.match(text)
                    assert duration is not None  # check_unit refused anything else
                    seconds = float(duration.group(1)) * _UNIT_SECONDS[duration.group(2)]
                    return _Duration(node.start_pos, seconds)
                return _Number(node.start_pos, float(text))
            return self.metric(node)
        kind = node.data
        if kind == "call":
            return self.call(node)
        if kind == "negation":
            operand = self.build(node.children[1])
            self.need(operand, "condition", "not", node.children[1])
            return _Not(_start(node), operand)
        if kind == "negative":
            operand = self.build(node.children[1])
            self.need(operand, "number", "-", node.children[1])
            return _Negative(_start(node), operand)
        if kind in ("or_test", "and_test"):
            word = "or" if kind == "or_test" else "and"
            operands = [self.build(child) for child in node.children]
            for child, operand in zip(node.children, operands, strict=True):
                self.need(operand, "condition", word, child)
            return _Logic(_start(node), word, operands)
        # comparison, sum, product: operand (op operand)*
        operands = [self.build(child) for child in node.children[::2]]
        ops = [str(op) for op in node.children[1::2]]
        for index, (child, operand) in enumerate(zip(node.children[::2], operands, strict=True)):
            self.need(operand, "number", ops[max(0, index - 1)], child)
        if kind == "comparison":
            return _Comparison(_start(node), operands, ops)
        for op, operand in zip(ops, operands[1:], strict=True):
            if op == "/" and operand.constant() == 0:
                raise self.fail("division by zero: the divisor is always 0", operand.pos)
        return _Arithmetic(_start(node), operands, ops)

    def need(self, operand: _Node, kind: str, operator: str, source: Tree | Token) -> None:
        if operand.kind == kind:
            return
        pos = operand.pos
        if operand.kind == "duration":
            raise self.fail(
                f"a duration ({operand.describe()}) can only be the window of a window function, "
                "e.g. avg(temperature, 10m)",
                pos,
            )
        if kind == "number":
            if operator in ("<", "<=", ">", ">=", "==", "!="):
                message = (
                    "a comparison needs numbers on both sides, but this is a condition (true or "
                    "false): combine conditions with and/or, e.g. x > 1 and y < 2"
                )
            else:
                message = (
                    f"'{operator}' needs numbers, but this is a condition (true or false); "
                    "conditions are not numbers"
                )
        elif operator == "not":
            message = (
                f"'not' needs a condition, but '{operand.describe()}' is a number: compare it, "
                f"e.g. not {operand.describe()} > 0"
            )
        else:
            message = (
                f"'{operator}' combines conditions, but '{operand.describe()}' is a number: "
                f"compare it, e.g. {operand.describe()} > 0"
            )
        raise self.fail(message, pos)

    def metric(self, token: Token) -> _Metric:
        name = str(token)
        if self.metrics is not None and name not in self.metrics:
            if self.metrics:
                have = sorted(self.metrics)
                listed = ", ".join(have)
                if len(listed) > 200:  # keep the message readable for types with many metrics
                    listed = listed[: listed.rfind(", ", 0, 200)] + ", ..."
                message = f"device type has no metric '{name}'; it has: {listed}"
                close = difflib.get_close_matches(name, have, n=1)
                if close:
                    message += f" (did you mean '{close[0]}'?)"
            else:
                message = (
                    f"device type has no metric '{name}'; it has no metrics yet: add them to the "
                    "device type first"
                )
            raise self.fail(message, token.start_pos)
        return _Metric(token.start_pos, name)

    def call(self, node: Tree) -> _Node:
        name_token, arguments = node.children
        function = str(name_token)
        pos = name_token.start_pos
        args: list[Tree | Token] = [] if arguments is None else list(arguments.children)
        if function in SCALAR_FUNCTIONS:
            if function == "abs" and len(args) != 1:
                raise self.fail(
                    f"abs() takes one number, e.g. abs(delta(temperature)); got {len(args)}", pos
                )
            if function != "abs" and not 2 <= len(args) <= MAX_SCALAR_ARGS:
                raise self.fail(
                    f"{function}() takes 2 to {MAX_SCALAR_ARGS} numbers, e.g. "
                    f"{function}(temperature, 80); got {len(args)}",
                    pos,
                )
            operands = [self.build(arg) for arg in args]
            for arg, operand in zip(args, operands, strict=True):
                self.need(operand, "number", f"{function}()", arg)
            return _Call(pos, function, operands)
        allowed, required = WINDOW_FUNCTIONS[function]
        example = _WINDOW_EXAMPLES[function]
        most = 2 if allowed else 1
        least = 2 if required else 1
        if not least <= len(args) <= most:
            shape = {
                (1, 1): "a metric",
                (1, 2): "a metric and optionally a window",
                (2, 2): "a metric and a window",
            }[(least, most)]
            raise self.fail(
                f"{function}() takes {shape}, e.g. {example}; got {len(args)} "
                f"argument{'s' if len(args) != 1 else ''}",
                pos,
            )
        first = args[0]
        if not (isinstance(first, Token) and first.type == "NAME"):
            raise self.fail(
                f"{function}() works on a metric name, not an expression: e.g. {example}",
                _start(first),
            )
        metric = self.metric(first)
        window = None
        if len(args) == 2:
            second = args[1]
            if not (isinstance(second, Token) and second.type == "NUMBER"):
                raise self.fail(
                    f"the window of {function}() must be a duration such as 30s, 10m, 2h or 7d",
                    _start(second),
                )
            literal = self.build(second)
            if not isinstance(literal, _Duration):
                raise self.fail(
                    f"write the window of {function}() with a unit, e.g. {second}s or "
                    f"{second}m (s, m, h or d)",
                    second.start_pos,
                )
            window = literal.seconds
        return _Term(pos, WindowTerm(function, metric.name, window))


def _start(node: Tree | Token) -> int:
    if isinstance(node, Token):
        return node.start_pos or 0
    meta = node.meta
    return 0 if getattr(meta, "empty", True) else meta.start_pos


def _expected_words(expected: set[str]) -> str:
    if expected & {"NUMBER", "NAME"}:
        return "a number, a metric or '('"
    words = []
    if "RPAR" in expected:
        words.append("')'")
    if "COMMA" in expected:
        words.append("','")
    if expected & _OPERATOR_TERMINALS:
        words.append("an operator (+ - * /, a comparison, and, or)")
    if "$END" in expected:
        words.append("the end of the condition")
    if not words:  # pragma: no cover - every LALR state expects one of the above
        return "something else"
    if len(words) == 1:
        return words[0]
    return ", ".join(words[:-1]) + " or " + words[-1]


# --- compiled nodes ------------------------------------------------------------------------------

# Precedence, loosest first, for printing the canonical form with the parentheses it needs.
_OR, _AND, _NOT, _COMPARE, _SUM, _PRODUCT, _NEGATIVE, _ATOM = range(1, 9)

_COMPARE_UFUNCS = {
    "<": np.less,
    "<=": np.less_equal,
    ">": np.greater,
    ">=": np.greater_equal,
    "==": np.equal,
    "!=": np.not_equal,
}
_ARITHMETIC_UFUNCS = {"+": np.add, "-": np.subtract, "*": np.multiply, "/": np.divide}


class _Node:
    kind = "number"  # "number", "condition" or "duration"
    precedence = _ATOM

    def __init__(self, pos: int) -> None:
        self.pos = pos

    def children(self) -> list[_Node]:
        return []

    def walk(self) -> Iterator[_Node]:
        stack: list[_Node] = [self]
        order: list[_Node] = []
        while stack:
            node = stack.pop()
            order.append(node)
            stack.extend(reversed(node.children()))
        return iter(order)

    def constant(self) -> float | None:
        """The node's value when it reads no column (folded at compile time), else None."""
        return None

    def compile(self) -> Compiled:
        raise NotImplementedError

    def compiled(self) -> Compiled:
        value = self.constant()
        if value is not None:
            return lambda columns: value
        return self.compile()

    def describe(self) -> str:
        raise NotImplementedError

    def wrapped(self, precedence: int) -> str:
        text = self.describe()
        return f"({text})" if self.precedence < precedence else text


class _Number(_Node):
    def __init__(self, pos: int, value: float) -> None:
        super().__init__(pos)
        self.value = value

    def constant(self) -> float:
        return self.value

    def describe(self) -> str:
        return _plain_number(self.value)


class _Duration(_Node):
    kind = "duration"

    def __init__(self, pos: int, seconds: float) -> None:
        super().__init__(pos)
        self.seconds = seconds

    def describe(self) -> str:
        return format_duration(self.seconds)


class _Metric(_Node):
    def __init__(self, pos: int, name: str) -> None:
        super().__init__(pos)
        self.name = name

    def compile(self) -> Compiled:
        name = self.name
        return lambda columns: columns[name]

    def describe(self) -> str:
        return self.name


class _Term(_Node):
    def __init__(self, pos: int, term: WindowTerm) -> None:
        super().__init__(pos)
        self.term = term

    def compile(self) -> Compiled:
        key = self.term.key
        return lambda columns: columns[key]

    def describe(self) -> str:
        return self.term.describe()


class _Negative(_Node):
    precedence = _NEGATIVE

    def __init__(self, pos: int, operand: _Node) -> None:
        super().__init__(pos)
        self.operand = operand

    def children(self) -> list[_Node]:
        return [self.operand]

    def constant(self) -> float | None:
        value = self.operand.constant()
        return None if value is None else -value

    def compile(self) -> Compiled:
        run = self.operand.compiled()
        return lambda columns: np.negative(run(columns))

    def describe(self) -> str:
        inner = self.operand.wrapped(_NEGATIVE)
        return f"-({inner})" if inner.startswith("-") else f"-{inner}"


class _Arithmetic(_Node):
    def __init__(self, pos: int, operands: list[_Node], ops: list[str]) -> None:
        super().__init__(pos)
        self.operands = operands
        self.ops = ops
        self.precedence = _SUM if ops[0] in "+-" else _PRODUCT

    def children(self) -> list[_Node]:
        return list(self.operands)

    def constant(self) -> float | None:
        values = [operand.constant() for operand in self.operands]
        if any(value is None for value in values):
            return None
        with np.errstate(all="ignore"):
            return float(self._apply([np.float64(v) for v in values]))

    def _apply(self, values: list[Any]) -> Any:
        result = values[0]
        for op, value in zip(self.ops, values[1:], strict=True):
            if op == "/":
                # Division by zero is unknown, not infinity: a rule must not fire on it.
                quotient = np.divide(result, value)
                result = np.where(value == 0, np.nan, quotient)
            else:
                result = _ARITHMETIC_UFUNCS[op](result, value)
        return result

    def compile(self) -> Compiled:
        runs = [operand.compiled() for operand in self.operands]
        apply = self._apply
        return lambda columns: apply([run(columns) for run in runs])

    def describe(self) -> str:
        text = self.operands[0].wrapped(self.precedence)
        for op, operand in zip(self.ops, self.operands[1:], strict=True):
            text += f" {op} {operand.wrapped(self.precedence + 1)}"
        return text


class _Call(_Node):
    def __init__(self, pos: int, function: str, operands: list[_Node]) -> None:
        super().__init__(pos)
        self.function = function
        self.operands = operands

    def children(self) -> list[_Node]:
        return list(self.operands)

    def _apply(self, values: list[Any]) -> Any:
        if self.function == "abs":
            return np.abs(values[0])
        # NaN propagates: the smallest of an unknown and a known value is unknown.
        combine = np.minimum if self.function == "min" else np.maximum
        result = values[0]
        for value in values[1:]:
            result = combine(result, value)
        return result

    def constant(self) -> float | None:
        values = [operand.constant() for operand in self.operands]
        if any(value is None for value in values):
            return None
        return float(self._apply([np.float64(v) for v in values]))

    def compile(self) -> Compiled:
        runs = [operand.compiled() for operand in self.operands]
        apply = self._apply
        return lambda columns: apply([run(columns) for run in runs])

    def describe(self) -> str:
        return f"{self.function}({', '.join(o.describe() for o in self.operands)})"


class _Comparison(_Node):
    """`a < b`: 1.0/0.0, NaN when either side is unknown; `1 < x < 5` is `1 < x and x < 5`."""

    kind = "condition"
    precedence = _COMPARE

    def __init__(self, pos: int, operands: list[_Node], ops: list[str]) -> None:
        super().__init__(pos)
        self.operands = operands
        self.ops = ops

    def children(self) -> list[_Node]:
        return list(self.operands)

    def compile(self) -> Compiled:
        pairs = [
            _compile_comparison(self.operands[i], op, self.operands[i + 1])
            for i, op in enumerate(self.ops)
        ]
        if len(pairs) == 1:
            return pairs[0]
        return _compile_logic("and", pairs)

    def describe(self) -> str:
        text = self.operands[0].wrapped(_SUM)
        for op, operand in zip(self.ops, self.operands[1:], strict=True):
            text += f" {op} {operand.wrapped(_SUM)}"
        return text


def _compile_comparison(left: _Node, op: str, right: _Node) -> Compiled:
    ufunc = _COMPARE_UFUNCS[op]
    left_value, right_value = left.constant(), right.constant()
    run_left, run_right = left.compiled(), right.compiled()
    if left_value is None and right_value is not None and not np.isnan(right_value):
        # The common case, metric > 80: only the column can be unknown.
        def compare_with_constant(columns: Columns) -> np.ndarray:
            values = run_left(columns)
            result = ufunc(values, right_value).astype(np.float64)
            result[np.isnan(values)] = np.nan
            return result

        return compare_with_constant

    def compare(columns: Columns) -> Any:
        a, b = run_left(columns), run_right(columns)
        result = np.asarray(ufunc(a, b), dtype=np.float64)
        return np.where(np.isnan(a) | np.isnan(b), np.nan, result)

    return compare


def _compile_logic(word: str, runs: list[Compiled]) -> Compiled:
    """Kleene and/or over 1.0 / 0.0 / NaN: false and unknown = false, true or unknown = true."""
    if word == "and":

        def conjunction(columns: Columns) -> Any:
            result = runs[0](columns)
            for run in runs[1:]:
                value = run(columns)
                result = np.where((result == 0) | (value == 0), 0.0, np.minimum(result, value))
            return result

        return conjunction

    def disjunction(columns: Columns) -> Any:
        result = runs[0](columns)
        for run in runs[1:]:
            value = run(columns)
            result = np.where((result == 1) | (value == 1), 1.0, np.maximum(result, value))
        return result

    return disjunction


class _Logic(_Node):
    kind = "condition"

    def __init__(self, pos: int, word: str, operands: list[_Node]) -> None:
        super().__init__(pos)
        self.word = word
        self.operands = operands
        self.precedence = _OR if word == "or" else _AND

    def children(self) -> list[_Node]:
        return list(self.operands)

    def compile(self) -> Compiled:
        return _compile_logic(self.word, [operand.compiled() for operand in self.operands])

    def describe(self) -> str:
        inner = self.precedence + 1
        return f" {self.word} ".join(operand.wrapped(inner) for operand in self.operands)


class _Not(_Node):
    kind = "condition"
    precedence = _NOT

    def __init__(self, pos: int, operand: _Node) -> None:
        super().__init__(pos)
        self.operand = operand

    def children(self) -> list[_Node]:
        return [self.operand]

    def compile(self) -> Compiled:
        run = self.operand.compiled()
        # 1 - NaN is NaN: not unknown stays unknown.
        return lambda columns: 1.0 - run(columns)

    def describe(self) -> str:
        return f"not {self.operand.wrapped(_NOT)}"
