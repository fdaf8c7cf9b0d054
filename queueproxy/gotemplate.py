"""A small subset of Go's `text/template`, enough for Knative request-log templates
(docs/contract.md#request-logs).

Supported: literal text; actions printing a pipeline; field chains `.A.B` on objects (attribute)
and mappings (key; a missing key prints `<no value>` as in Go); string, raw-string, number and
boolean literals; the functions `js`, `index`, `print`, `len`, `html` and `urlquery`; pipelines
`{{.X | js}}`; the trim markers `{{- ` and ` -}}`; comments `{{/* ... */}}`.
Not supported (a `TemplateError` at parse time): `if`/`range`/`with`/`define`/`template`/`block`,
variables (`$x`), parentheses, and any other function.

Values print the way Go's `fmt.Print` prints them: floats in `%v` form (`1e+06`, `0.25`), lists
as `[a b]`, `None` as `<nil>`. That matters because Knative's v1.18 template prints
`{{index .Request.Header "X-B3-Traceid"}}`, a `[]string`, so its trace id reads `[abc]`.

`parse(text)` compiles once; `Template.render(data)` runs the compiled closures and raises
`TemplateExecError` where Go's `Execute` would fail (unknown field of an object, bad index).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from queueproxy.gofloat import format_go_float


class TemplateError(ValueError):
    """The template text is not in the supported subset (raised by `parse`)."""


class TemplateExecError(RuntimeError):
    """Rendering failed for this data, where Go's `Execute` returns an error."""


class _NoValue:
    """What Go yields for a missing map key in a field chain; prints as `<no value>`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<no value>"


NO_VALUE: Any = _NoValue()


# ---- Formatting values like Go's fmt %v -------------------------------------------------------


def format_value(value: Any) -> str:
    """How Go's template engine prints a value."""
    kind = type(value)
    if kind is str:
        return value
    if kind is int:
        return str(value)
    if kind is float:
        return format_go_float(value)
    if kind is bool:
        return "true" if value else "false"
    if value is None:
        return "<nil>"
    if value is NO_VALUE:
        return "<no value>"
    if isinstance(value, bytes | bytearray):
        return "[" + " ".join(map(str, value)) + "]"
    if isinstance(value, list | tuple):
        return "[" + " ".join(map(format_value, value)) + "]"
    if isinstance(value, Mapping):
        items = (f"{format_value(k)}:{format_value(value[k])}" for k in sorted(value))
        return "map[" + " ".join(items) + "]"
    return str(value)


def sprint(args: tuple[Any, ...]) -> str:
    """`fmt.Sprint`: spaces between operands when neither side is a string."""
    out = []
    previous_is_string = True
    for i, arg in enumerate(args):
        is_string = type(arg) is str
        if i > 0 and not is_string and not previous_is_string:
            out.append(" ")
        out.append(format_value(arg))
        previous_is_string = is_string
    return "".join(out)


def _text_of(args: tuple[Any, ...]) -> str:
    if len(args) == 1 and type(args[0]) is str:
        return args[0]
    return sprint(args)


# ---- Functions --------------------------------------------------------------------------------

_JS_SPECIAL = re.compile(r"""[\\'"<>&=\x00-\x1f]|[^\x00-\x7f]""")
_JS_ASCII = {
    "\\": "\\\\",
    "'": "\\'",
    '"': '\\"',
    "<": "\\u003C",
    ">": "\\u003E",
    "&": "\\u0026",
    "=": "\\u003D",
}


def _js_replace(match: re.Match[str]) -> str:
    char = match.group()
    escaped = _JS_ASCII.get(char)
    if escaped is not None:
        return escaped
    code = ord(char)
    # Go passes printable runes through, and also bytes that are not valid UTF-8 (decoded with
    # surrogateescape, they are U+DC80..U+DCFF here).
    if code >= 0x80 and (char.isprintable() or 0xDC80 <= code <= 0xDCFF):
        return char
    return f"\\u{code:04X}"


def js_escape(text: str) -> str:
    """Go's `template.JSEscapeString`."""
    if _JS_SPECIAL.search(text) is None:
        return text
    return _JS_SPECIAL.sub(_js_replace, text)


_HTML_ESCAPES = str.maketrans(
    {'"': "&#34;", "'": "&#39;", "&": "&amp;", "<": "&lt;", ">": "&gt;", "\x00": "\ufffd"}
)


def _fn_js(*args: Any) -> str:
    return js_escape(_text_of(args))


def _fn_html(*args: Any) -> str:
    return _text_of(args).translate(_HTML_ESCAPES)


def _fn_urlquery(*args: Any) -> str:
    from urllib.parse import quote_plus  # only templates that call urlquery pay its import

    return quote_plus(_text_of(args), safe="", errors="surrogateescape")


def _fn_print(*args: Any) -> str:
    return sprint(args)


def _fn_len(item: Any) -> int:
    try:
        return len(item)
    except TypeError:
        raise TemplateExecError(f"len of {type(item).__name__}") from None


def _fn_index(item: Any, *keys: Any) -> Any:
    """Go's `index`: a missing map key gives the map's zero value (`zero_value` attribute of the
    mapping, else None); a list index out of range is an error."""
    for key in keys:
        if isinstance(item, Mapping):
            try:
                item = item[key]
            except (KeyError, TypeError):
                item = getattr(item, "zero_value", None)
        elif isinstance(item, list | tuple | str) and type(key) is int:
            if not 0 <= key < len(item):
                raise TemplateExecError(f"index out of range: {key}")
            item = item[key]
        else:
            raise TemplateExecError(f"can't index item of type {type(item).__name__}")
    return item


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "html": _fn_html,
    "index": _fn_index,
    "js": _fn_js,
    "len": _fn_len,
    "print": _fn_print,
    "urlquery": _fn_urlquery,
}

# ---- Evaluation -------------------------------------------------------------------------------


_is_mapping_type: dict[type, bool] = {}  # isinstance(x, Mapping) is slow; ask once per type


def _field(value: Any, name: str) -> Any:
    kind = type(value)
    is_mapping = _is_mapping_type.get(kind)
    if is_mapping is None:
        is_mapping = _is_mapping_type[kind] = isinstance(value, Mapping)
    if is_mapping:
        try:
            return value[name]
        except KeyError:
            return NO_VALUE
    if value is None or value is NO_VALUE:
        raise TemplateExecError(f"nil pointer evaluating .{name}")
    if not name[0].isupper():
        raise TemplateExecError(f"{name} is an unexported field of {type(value).__name__}")
    try:
        found = getattr(value, name)
    except AttributeError:
        raise TemplateExecError(
            f"can't evaluate field {name} in type {type(value).__name__}"
        ) from None
    # Go calls niladic methods met in a field chain (e.g. Request.UserAgent).
    return found() if callable(found) else found


Evaluator = Callable[[Any], Any]


def _field_chain(names: tuple[str, ...]) -> Evaluator:
    if not names:
        return lambda data: data

    def evaluate(data: Any) -> Any:
        for name in names:
            data = _field(data, name)
        return data

    return evaluate


# ---- Parsing ----------------------------------------------------------------------------------

_SPACE = " \t\r\n"
_KEYWORDS = {"if", "else", "end", "range", "with", "define", "template", "block", "break",
             "continue"}  # fmt: skip
_TOKEN = re.compile(
    r"""
    (?P<space>[ \t\r\n]+)
  | (?P<close>-?\}\})
  | (?P<string>"(?:[^"\\\n]|\\.)*")
  | (?P<raw>`[^`]*`)
  | (?P<field>(?:\.[A-Za-z_][A-Za-z0-9_]*)+|\.)
  | (?P<number>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<pipe>\|)
    """,
    re.VERBOSE,
)
_STRING_ESCAPE = re.compile(r"\\(?:([abfnrtv\\\"])|x([0-9a-fA-F]{2})|u([0-9a-fA-F]{4})"
                            r"|U([0-9a-fA-F]{8})|([0-7]{3})|(.))")  # fmt: skip
_SIMPLE_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v",
                   "\\": "\\", '"': '"'}  # fmt: skip


def _unquote(literal: str) -> str:
    def replace(match: re.Match[str]) -> str:
        simple, hex2, hex4, hex8, octal, bad = match.groups()
        if bad is not None:
            raise TemplateError(f"unknown escape sequence in string {literal}")
        if simple is not None:
            return _SIMPLE_ESCAPES[simple]
        if octal is not None:
            return chr(int(octal, 8))
        return chr(int(hex2 or hex4 or hex8, 16))

    return _STRING_ESCAPE.sub(replace, literal[1:-1])


Token = tuple[str, str]


def _operand(token: Token) -> Evaluator:
    kind, text = token
    if kind == "field":
        return _field_chain(tuple(text.split(".")[1:]) if text != "." else ())
    if kind in ("string", "raw"):
        value: Any = _unquote(text) if kind == "string" else text[1:-1]
    elif kind == "number":
        value = float(text) if any(c in text for c in ".eE") else int(text)
    elif kind == "ident" and text in ("true", "false"):
        value = text == "true"
    elif kind == "ident" and text == "nil":
        raise TemplateError("nil is not a command")
    elif kind == "ident":
        raise TemplateError(f'function "{text}" not defined or not supported as an argument')
    else:
        raise TemplateError(f"unexpected {text!r} in operand")
    return lambda data: value


def _no_value_to_nil(value: Any) -> Any:
    # Go passes a missing map value to a function as a nil interface.
    return None if value is NO_VALUE else value


def _command(tokens: list[Token], stage: int) -> Callable[[Any, tuple[Any, ...]], Any]:
    """One pipeline stage; the previous stage's value, if any, is passed in `piped`."""
    kind, text = tokens[0]
    if kind == "ident" and text in FUNCTIONS:
        function = FUNCTIONS[text]
        args = tuple(_operand(token) for token in tokens[1:])

        def call(data: Any, piped: tuple[Any, ...]) -> Any:
            values = [_no_value_to_nil(arg(data)) for arg in args]
            values.extend(_no_value_to_nil(value) for value in piped)
            try:
                return function(*values)
            except TypeError as error:  # wrong number of arguments
                raise TemplateExecError(f"error calling {text}: {error}") from None

        return call
    if kind == "ident" and text not in ("true", "false", "nil"):
        raise TemplateError(f'function "{text}" not defined')
    if stage > 0:
        raise TemplateError(f"non executable command in pipeline stage {stage + 1}")
    if len(tokens) > 1:
        raise TemplateError(f"can't give argument to non-function {text}")
    operand = _operand(tokens[0])
    return lambda data, piped: operand(data)


def _pipeline(tokens: list[Token]) -> Evaluator:
    if not tokens:
        raise TemplateError("missing value for command")
    first_kind, first_text = tokens[0]
    if first_kind == "ident" and first_text in _KEYWORDS:
        raise TemplateError(f'"{first_text}" actions are not supported')
    stages: list[list[Token]] = [[]]
    for token in tokens:
        if token[0] == "pipe":
            stages.append([])
        else:
            stages[-1].append(token)
    if any(not stage for stage in stages):
        raise TemplateError("missing command in pipeline")
    commands = [_command(stage, i) for i, stage in enumerate(stages)]
    first, rest = commands[0], commands[1:]
    if not rest:
        return lambda data: first(data, ())

    def evaluate(data: Any) -> Any:
        value = first(data, ())
        for command in rest:
            value = command(data, (value,))
        return value

    return evaluate


def _lex_action(text: str, start: int) -> tuple[list[Token], int, bool]:
    """Tokens of the action starting at `start` (just after `{{` and any left trim marker),
    the position after its `}}`, and whether it ended with a right trim marker."""
    tokens: list[Token] = []
    position = start
    while True:
        match = _TOKEN.match(text, position)
        if match is None:
            if position >= len(text):
                raise TemplateError("unclosed action")
            raise TemplateError(f"unexpected {text[position]!r} in action")
        kind = match.lastgroup
        assert kind is not None
        if kind == "close":
            trim = match.group().startswith("-")
            if trim and text[position - 1] not in _SPACE:
                raise TemplateError("unexpected '-' in action")
            return tokens, match.end(), trim
        if kind != "space":
            tokens.append((kind, match.group()))
        position = match.end()


def _skip_comment(text: str, start: int) -> tuple[int, bool]:
    end = text.find("*/", start + 2)
    if end < 0:
        raise TemplateError("unclosed comment")
    after = end + 2
    if text.startswith("}}", after):
        return after + 2, False
    if after < len(text) and text[after] in _SPACE and text.startswith("-}}", after + 1):
        return after + 4, True
    raise TemplateError("comment ends before closing delimiter")


Part = str | Callable[[Any], str]  # literal text, or an action rendering itself


def _print_action(pipeline: Evaluator) -> Callable[[Any], str]:
    return lambda data: format_value(pipeline(data))


class Template:
    """A parsed template; `render` may be called any number of times."""

    __slots__ = ("source", "_parts")

    def __init__(self, source: str, parts: list[Part]) -> None:
        self.source = source
        self._parts = tuple(parts)

    def render(self, data: Any) -> str:
        return "".join([part if type(part) is str else part(data) for part in self._parts])


def parse(text: str) -> Template:
    """Compile `text`; raises `TemplateError` for syntax outside the supported subset."""
    parts: list[Part] = []
    literal_start = position = 0
    trim_next_literal = False
    while True:
        open_at = text.find("{{", position)
        literal = text[literal_start : open_at if open_at >= 0 else len(text)]
        if trim_next_literal:
            literal = literal.lstrip(_SPACE)
        if open_at < 0:
            if literal:
                parts.append(literal)
            return Template(text, _merge_literals(parts))
        position = open_at + 2
        if text.startswith("-", position) and text[position + 1 : position + 2] in tuple(_SPACE):
            literal = literal.rstrip(_SPACE)
            position += 2
        if literal:
            parts.append(literal)
        if text.startswith("/*", position):
            position, trim_next_literal = _skip_comment(text, position)
        else:
            tokens, position, trim_next_literal = _lex_action(text, position)
            parts.append(_print_action(_pipeline(tokens)))
        literal_start = position


def _merge_literals(parts: list[Part]) -> list[Part]:
    merged: list[Part] = []
    for part in parts:
        if merged and type(part) is str and type(merged[-1]) is str:
            merged[-1] = merged[-1] + part  # type: ignore[operator]
        else:
            merged.append(part)
    return merged
