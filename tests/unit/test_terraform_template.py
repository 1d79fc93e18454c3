"""tests/support/tftemplate.py's renderer: Terraform's template semantics for the subset the templates use (the
cases below follow HCL's parser: hclsyntax/parser_template.go and scan_tokens.rl), and properties over arbitrary
input (hypothesis): escapes round-trip, jsonencode'd strings round-trip through JSON and through YAML."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
import yaml
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tests.support.tftemplate import Template, TemplateError, jsonencode, yaml_safe


def render(text: str, **variables: Any) -> str:
    return Template(text, "t").render(variables)


@pytest.mark.parametrize(("text", "variables", "expected"), [
    ("a ${x} b", {"x": "1"}, "a 1 b"),
    ("${x} ${y} ${z}", {"x": 5, "y": True, "z": 2.5}, "5 true 2.5"),
    ("${n}", {"n": 2.0}, "2"),
    ("${n}", {"n": 1e20}, "100000000000000000000"),
    ("${o.a} ${o[\"b-c\"]} ${o.d.e}", {"o": {"a": "1", "b-c": "2", "d": {"e": "3"}}}, "1 2 3"),
    ('${join(", ", xs)}', {"xs": ["a", 1, False]}, "a, 1, false"),
    ("${join(\"\", xs)}", {"xs": []}, ""),
    ("$${x} %%{ if } $$ % $5 %x", {}, "${x} %{ if } $$ % $5 %x"),
    # ~} strips the rest of the line (newline included), never the next line's indentation.
    ("l:\n%{ for x in xs ~}\n  - ${x}\n%{ endfor ~}\nend\n", {"xs": ["a", "b"]}, "l:\n  - a\n  - b\nend\n"),
    ("%{ for x in xs ~}   \n  ${x}\n%{ endfor }", {"xs": ["a"]}, "  a\n"),
    # Without ~ every character stays.
    ("%{ for x in xs }\n${x}\n%{ endfor }\n", {"xs": ["a"]}, "\na\n\n"),
    # {~ strips the whitespace just before: the indentation, or the previous newline at the start of a line.
    ("a\n  %{~ if t }b%{ endif }", {"t": True}, "a\nb"),
    ("a\n%{~ if t }b%{ endif }", {"t": True}, "ab"),
    ("a  ${~ x ~}  b", {"x": "-"}, "a-b"),
    ("%{ if t }T%{ else }F%{ endif }|%{ if !t }T%{ else }F%{ endif }", {"t": True}, "T|F"),
    ("%{ if t }T%{ endif }", {"t": False}, ""),
    ("%{ for k, v in m }${k}=${v};%{ endfor }", {"m": {"b": 2, "a": 1}}, "a=1;b=2;"),
    ("%{ for v in m }${v}%{ endfor }", {"m": {"b": "2", "a": "1"}}, "12"),
    ("%{ for i, v in xs }${i}${v} %{ endfor }", {"xs": ["a", "b"]}, "0a 1b "),
    ("%{ for x in xs }%{ for y in x.ys }${x.n}${y}%{ endfor }%{ endfor }",
     {"xs": [{"n": "a", "ys": ["1", "2"]}, {"n": "b", "ys": []}]}, "a1a2"),
    ("${jsonencode(v)}", {"v": {"b": [1, None, "<&>"], "a": "é\u2028"}},
     '{"a":"é\\u2028","b":[1,null,"\\u003c\\u0026\\u003e"]}'),
    ("${x}", {"x": "$${not} %{ this }"}, "$${not} %{ this }"),  # values are never parsed
])
def test_terraform_semantics(text: str, variables: dict[str, Any], expected: str) -> None:
    assert render(text, **variables) == expected


@pytest.mark.parametrize(("text", "variables", "message"), [
    ("${x}", {}, "does not contain key 'x'"),
    ("%{ if t }${never}%{ endif }", {"t": False}, "does not contain key 'never'"),  # checked in every branch
    ("${x}", {"x": None}, "cannot include null"),
    ("${x}", {"x": [1]}, "cannot include a list"),
    ("${x.y}", {"x": "s"}, "x is a string"),
    ("${x.y}", {"x": {}}, "x.y does not exist"),
    ("%{ if x }%{ endif }", {"x": "true"}, "a bool is required"),
    ("%{ for a in x }%{ endfor }", {"x": "abc"}, "a list or map is required"),
    ("${join(\",\", x)}", {"x": "abc"}, "a list is required"),
    ("${x}", {"x": {1, 2}}, "not a Terraform value"),
])
def test_values_outside_terraform_rules_are_refused(text: str, variables: dict[str, Any], message: str) -> None:
    with pytest.raises(TemplateError, match=message):
        render(text, **variables)


def test_errors_name_the_template_and_line() -> None:
    with pytest.raises(TemplateError, match=r"^name.tftpl:3: unsupported syntax"):
        Template("a\nb\n${x + 1}\n", "name.tftpl")


def test_invalid_variable_names_are_refused_as_templatefile_does() -> None:
    with pytest.raises(TemplateError, match="invalid template variable name"):
        Template("x", "t").render({"not-an-identifier": 1})


def test_names_are_the_top_level_references_without_loop_variables() -> None:
    template = Template("${a}%{ for k, v in m }${k}${v.x}${b}%{ for y in v.ys }${y}${c.d}%{ endfor }%{ endfor }"
                        '%{ if !e }${jsonencode(f)}%{ else }${join(",", g)}%{ endif }', "t")
    assert template.names == {"a", "m", "b", "c", "e", "f", "g"}


# --- properties -----------------------------------------------------------------------------------------------

LITERAL = st.text(alphabet=st.sampled_from(list("$%{}~ \t\nab!\"\\é😀")), max_size=60)


def escape(text: str) -> str:
    """How a template writes literal text: ${ and %{ escaped."""
    return text.replace("${", "$${").replace("%{", "%%{")


@settings(max_examples=300, deadline=None)
@given(LITERAL)
@example("$${")
@example("%%{x")
@example("$$${")
def test_escaped_literal_text_renders_unchanged(text: str) -> None:
    assert render(escape(text)) == text


@settings(max_examples=300, deadline=None)
@given(st.text())
@example("\x7f")
@example("\x85line")
@example("\u2028 <script> & 😀 \x00 \ufeff")
@example("no\ttabs\r\nhere")
def test_jsonencoded_strings_round_trip_through_json_and_yaml(value: str) -> None:
    rendered = render("key: ${jsonencode(v)}\n", v=value)
    assert json.loads(rendered.removeprefix("key: ")) == value
    if yaml_safe(value):
        assert yaml.safe_load(rendered) == {"key": value}
    else:
        # What JSON leaves raw and YAML 1.1 refuses (DEL, C1 controls, U+FFFE/FFFF) or folds (NEL): never the same
        # value back. Every value the modules interpolate is validated far narrower than this.
        with contextlib.suppress(yaml.YAMLError):
            assert yaml.safe_load(rendered) != {"key": value}


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20)
    | st.floats(min_value=-1e15, max_value=1e15, allow_nan=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(JSON_VALUES)
@example({"b": [0.1, -0.0, 2.0, 1e-7], "a": "<\u2028>"})
def test_jsonencode_is_json_with_sorted_keys_and_numbers_without_exponent(value: Any) -> None:
    def number(text: str) -> float:
        assert "e" not in text.lower(), text
        return float(text)

    text = jsonencode(value)
    assert json.loads(text, parse_float=number) == value
    assert not set(text) & set("<>&\u2028\u2029")
    if isinstance(value, dict):
        assert list(json.loads(text)) == sorted(value)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(alphabet="abc-", min_size=1, max_size=5), max_size=6), st.booleans())
def test_a_yaml_list_loop_renders_one_item_per_element(items: list[str], flag: bool) -> None:
    text = ("root:\n  items:\n%{ for i in items ~}\n    - ${jsonencode(i)}\n%{ endfor ~}\n"
            "%{ if flag ~}\n  flag: true\n%{ endif ~}\n  end: 1\n")
    doc = yaml.safe_load(render(text, items=items, flag=flag))
    assert doc == {"root": {"items": items or None, **({"flag": True} if flag else {}), "end": 1}}
