"""The Go text/template subset (contract §10)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from queueproxy.gotemplate import (
    TemplateError,
    TemplateExecError,
    format_go_float,
    js_escape,
    parse,
)
from tests.contract import HEAD_TEMPLATE, V118_TEMPLATE


def sample_input(**request_overrides: object) -> SimpleNamespace:
    request = {
        "Method": "POST",
        "RequestURI": "/search?q=a&lang=en",
        "ContentLength": 512,
        "UserAgent": 'curl/8.5 "quoted"',
        "RemoteAddr": "10.0.0.7:51234",
        "Referer": "https://example.com/<page>",
        "Proto": "HTTP/1.1",
        "Header": {"X-B3-Traceid": ["80f198ee56343ba864fe8b2a57d3eff7"]},
        **request_overrides,
    }
    return SimpleNamespace(
        Request=SimpleNamespace(**request),
        Response=SimpleNamespace(Code=201, Size=1234, Latency=0.0125),
        Revision=SimpleNamespace(PodIP="10.1.2.3"),
        TraceID="4bf92f3577b34da6a3ce929d0e0e4736",
    )


@pytest.mark.parametrize("template", [HEAD_TEMPLATE, V118_TEMPLATE], ids=["head", "v1.18"])
def test_default_templates_render_valid_json(template: str) -> None:
    entry = json.loads(parse(template).render(sample_input()))
    assert entry["httpRequest"] == {
        "requestMethod": "POST",
        "requestUrl": "/search?q=a&lang=en",  # js-escaped as \u0026 and \u003D in the line
        "requestSize": "512",
        "status": 201,
        "responseSize": "1234",
        "userAgent": 'curl/8.5 "quoted"',
        "remoteIp": "10.0.0.7:51234",
        "serverIp": "10.1.2.3",
        "referer": "https://example.com/<page>",
        "latency": "0.0125s",
        "protocol": "HTTP/1.1",
    }


def test_trace_id_forms_of_the_two_templates() -> None:
    data = sample_input()
    assert json.loads(parse(HEAD_TEMPLATE).render(data))["traceId"] == (
        "4bf92f3577b34da6a3ce929d0e0e4736"
    )
    # v1.18 indexes http.Header, whose values are []string: Go prints the slice in brackets.
    assert json.loads(parse(V118_TEMPLATE).render(data))["traceId"] == (
        "[80f198ee56343ba864fe8b2a57d3eff7]"
    )
    no_header = GoLikeHeader()
    assert (
        json.loads(parse(V118_TEMPLATE).render(sample_input(Header=no_header)))["traceId"] == "[]"
    )


class GoLikeHeader(dict):  # type: ignore[type-arg]
    """A header map whose missing entries are Go's nil []string."""

    zero_value = ()


@pytest.mark.parametrize(
    ("text", "escaped"),
    [
        ("plain text/path-1_2.3~", "plain text/path-1_2.3~"),
        ("\\", "\\\\"),
        ("'", "\\'"),
        ('"', '\\"'),
        ("<script>", "\\u003Cscript\\u003E"),
        ("a&b=c", "a\\u0026b\\u003Dc"),
        ("line\nbreak\ttab\r", "line\\u000Abreak\\u0009tab\\u000D"),
        ("\x00\x1f", "\\u0000\\u001F"),
        ("\x7f", "\x7f"),  # DEL is not special to Go's escaper
        ("café ☕ 日本", "café ☕ 日本"),  # printable runes pass through
        ("\u00a0", "\\u00A0"),  # no-break space is not printable for Go
        ("a\u2028b", "a\\u2028b"),  # line separator
        ("\u200b", "\\u200B"),  # zero-width space (format character)
        ("\udcff", "\udcff"),  # an undecodable byte passes through, as in Go
    ],
)
def test_js_escape(text: str, escaped: str) -> None:
    assert js_escape(text) == escaped
    assert parse("{{js .}}").render(text) == escaped
    assert parse("{{. | js}}").render(text) == escaped


@pytest.mark.parametrize(
    ("value", "printed"),
    [
        (0.0125, "0.0125"),
        (2.0, "2"),
        (0.0001, "0.0001"),
        (0.00001234, "1.234e-05"),
        (123456.0, "123456"),
        (1e6, "1e+06"),
        (1234567.0, "1.234567e+06"),
        (-2.5, "-2.5"),
        (0.1 + 0.2, "0.30000000000000004"),
        (0.0, "0"),
        (float("inf"), "+Inf"),
        (float("nan"), "NaN"),
    ],
)
def test_floats_print_like_go(value: float, printed: str) -> None:
    assert format_go_float(value) == printed
    assert parse("{{.}}").render(value) == printed


@pytest.mark.parametrize(
    ("template", "data", "rendered"),
    [
        ("plain text", None, "plain text"),
        ("a}}b", None, "a}}b"),
        ("{{.A.B.C}}", {"A": {"B": {"C": "deep"}}}, "deep"),
        ("{{.Missing}}", {"A": 1}, "<no value>"),
        ("{{.}}", {"b": 2, "a": "x"}, "map[a:x b:2]"),
        ("{{.}}", ["a", 1, True, None], "[a 1 true <nil>]"),
        ("{{.N}} {{.B}}", SimpleNamespace(N=-1, B=False), "-1 false"),
        ("{{.Method}}", SimpleNamespace(Method=lambda: "called"), "called"),
        ('{{index . "k"}}', {"k": "v"}, "v"),
        ('{{index . "nope"}}', {"k": "v"}, "<nil>"),
        ('{{index .H "nope"}}', {"H": GoLikeHeader()}, "[]"),
        ('{{index .H "X-Multi"}}', {"H": GoLikeHeader({"X-Multi": ["a", "b"]})}, "[a b]"),
        ('{{index . "outer" "inner"}}', {"outer": {"inner": "both"}}, "both"),
        ("{{index . 1}}", ["zero", "one"], "one"),
        ("{{js .Missing}}", {}, "\\u003Cnil\\u003E"),  # Go passes a missing value as nil
        ('{{"tab\\there" | js}}', None, "tab\\u0009here"),
        ("{{`raw\\n`}}", None, "raw\\n"),
        ('{{print "a" 1 2 "b"}}', None, "a1 2b"),
        ('{{"x" | print "y"}}', None, "yx"),
        ("{{len .}}", [1, 2, 3], "3"),
        ("{{html \"<a href='x'>&\"}}", None, "&lt;a href=&#39;x&#39;&gt;&amp;"),
        ('{{urlquery "a b&c/d"}}', None, "a+b%26c%2Fd"),
        ("{{true}} {{42}} {{-3}}", None, "true 42 -3"),
        ("a  \n {{- .X -}} \n  b", {"X": "x"}, "axb"),
        ("a {{- /* a comment */ -}} b", None, "ab"),
        ("a {{/* kept spaces */}} b", None, "a  b"),
        ("{{ .X }}", {"X": "spaced"}, "spaced"),
    ],
)
def test_rendering(template: str, data: object, rendered: str) -> None:
    assert parse(template).render(data) == rendered


@pytest.mark.parametrize(
    "template",
    [
        "{{}}",
        "{{ }}",
        "{{if .A}}yes{{end}}",
        "{{range .Items}}{{.}}{{end}}",
        "{{with .A}}{{.}}{{end}}",
        '{{define "x"}}{{end}}',
        "{{end}}",
        '{{printf "%s" .A}}',
        "{{nosuchfunction .A}}",
        "{{.A",
        "text {{.A}} {{",
        "{{.A | .B}}",
        "{{.A |}}",
        "{{$x := .A}}",
        "{{$}}",
        "{{(.A)}}",
        "{{.A-}}",
        "{{/* unclosed comment",
        "{{/* comment */ .A}}",
        '{{.A "argument"}}',
        "{{nil}}",
        '{{"\\q"}}',
        '{{js .A "unterminated}}',
    ],
)
def test_unsupported_or_bad_templates_fail_at_parse_time(template: str) -> None:
    with pytest.raises(TemplateError):
        parse(template)


@pytest.mark.parametrize(
    ("template", "data"),
    [
        ("{{.Request.Something}}", SimpleNamespace(Request=SimpleNamespace(Method="GET"))),
        ("{{.lower}}", SimpleNamespace(lower="unexported in Go")),
        ("{{.A.B}}", {"A": None}),
        ("{{.Missing.B}}", SimpleNamespace()),
        ("{{index . 5}}", ["only one"]),
        ('{{index . "k"}}', 42),
        ("{{len .}}", 42),
        ("{{index}}", None),
    ],
)
def test_execution_errors(template: str, data: object) -> None:
    compiled = parse(template)
    with pytest.raises(TemplateExecError):
        compiled.render(data)


def test_a_parsed_template_renders_many_times() -> None:
    compiled = parse("{{.N}};")
    assert [compiled.render({"N": n}) for n in range(3)] == ["0;", "1;", "2;"]
    assert compiled.source == "{{.N}};"
