"""Terraform's template language, as much of it as terraform/templates/ uses, rendered in Python; and the files the
modules render, computed the way the modules compute them.

Theory of operation.

The renderer follows HashiCorp's HCL template parser (hclsyntax/parser_template.go, scan_tokens.rl) for exactly
this subset and refuses anything else with a TemplateError naming the template and line, so a template that drifts
out of the subset fails loudly instead of rendering differently from Terraform:

    ${name}  ${name.attr}  ${name["key"]}  ${jsonencode(ref)}  ${join("sep", ref)}
    %{ for x in ref }  %{ for k, v in ref }  %{ endfor }  %{ if ref }  %{ if !ref }  %{ else }  %{ endif }
    $${ and %%{ (a literal ${ and %{), and the ~ strip markers on either side of any sequence.

Literal text is cut into tokens as HCL's scanner cuts it: a token ends after each newline and around each `$` or
`%` that opens no sequence. A `~}` strips the leading whitespace of the next token only (so the rest of the line,
newline included, but never the indentation of the next line), and `{~` the trailing whitespace of the token just
before (the indentation in front of the sequence, or the previous line's newline when the sequence starts a
line). Values follow Terraform's rules: strings, numbers and bools interpolate (numbers without exponent, bools as
true/false), null and collections do not; `if` needs a bool; `for` walks a list in order and a map by sorted key;
jsonencode sorts keys and escapes <, >, &, U+2028 and U+2029 as Terraform's does. As Terraform's templatefile does,
rendering checks that the variables hold every name the template references, in any branch.

The rest mirrors the modules' locals in Python: `render_global` and `render_region` take a module's variables (by
their Terraform names, optional attributes defaulted as Terraform does) and return what the module outputs
(`Rendered`: files, secret files, units, cloud-init per node). tests/unit/test_terraform.py checks that they render
the same templates with the same variable names as the modules' templatefile calls. `local_example_vars`,
`render_local_example` and `local_example_files` do what terraform/examples/local does (its README lists the
variables per node; LOCAL_PORTS are its port defaults), `make_local_tls` writes its `tls_dir`, `write_files` writes
files as it does. Everything is one module because the tests' support for terraform/ lives in this one file.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any, TypeAlias

REPO = Path(__file__).resolve().parents[2]
TERRAFORM = REPO / "terraform"
TEMPLATES = TERRAFORM / "templates"


class TemplateError(ValueError):
    """A template outside the supported subset, or variables that do not fit it. One line, naming template and
    line."""


# --- the syntax tree ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Ref:
    """`root.attr["key"]...`: a variable and a path into it."""

    root: str
    path: tuple[str, ...]
    line: int

    def __str__(self) -> str:
        return self.root + "".join(f".{p}" if _IDENT.fullmatch(p) else f"[{json.dumps(p)}]" for p in self.path)


@dataclass(frozen=True)
class Call:
    """`jsonencode(ref)` or `join("sep", ref)`."""

    name: str
    separator: str
    arg: Ref


Expr: TypeAlias = Ref | Call


@dataclass(frozen=True)
class Interp:
    expr: Expr


@dataclass(frozen=True)
class For:
    key: str | None
    value: str
    collection: Ref
    body: tuple[Node, ...]


@dataclass(frozen=True)
class If:
    cond: Ref
    negate: bool
    then: tuple[Node, ...]
    otherwise: tuple[Node, ...]


Node: TypeAlias = str | Interp | For | If


# --- scanning: literal tokens, interpolations and directives --------------------------------------------------

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_GO_SPACE = frozenset("\t\n\v\f\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000") | frozenset(
    chr(c) for c in range(0x2000, 0x200B))
_LITERAL_RUN = re.compile(r"[^$%\r\n]*")


def _lstrip(text: str) -> str:  # Go's strings.TrimLeftFunc(s, unicode.IsSpace)
    i = 0
    while i < len(text) and text[i] in _GO_SPACE:
        i += 1
    return text[i:]


def _rstrip(text: str) -> str:
    i = len(text)
    while i > 0 and text[i - 1] in _GO_SPACE:
        i -= 1
    return text[:i]


@dataclass
class _Lit:
    text: str


@dataclass(frozen=True)
class _Seq:
    kind: str  # "interp" or "control"
    tokens: tuple[tuple[str, str], ...]  # (kind, text): ident, string, punct
    line: int


class _Scanner:
    def __init__(self, text: str, name: str) -> None:
        self.text, self.name = text, name

    def fail(self, pos: int, message: str) -> TemplateError:
        line = self.text.count("\n", 0, pos) + 1
        return TemplateError(f"{self.name}:{line}: {message}")

    def tokens(self) -> list[_Lit | _Seq]:
        """HCL's template tokens, with the strip markers applied (parseTemplateParts)."""
        text, pos = self.text, 0
        out: list[_Lit | _Seq] = []
        ltrim_next = can_trim_prev = False
        while pos < len(text):
            ltrim, ltrim_next = ltrim_next, False
            trim_prev, can_trim_prev = can_trim_prev, False
            if text.startswith(("${", "%{"), pos):
                kind = "interp" if text[pos] == "$" else "control"
                start = pos
                pos += 2
                if pos < len(text) and text[pos] == "~":
                    pos += 1
                    if trim_prev and out and isinstance(out[-1], _Lit):
                        out[-1].text = _rstrip(out[-1].text)
                toks, pos, strip_after = self._sequence(pos, start)
                out.append(_Seq(kind, toks, text.count("\n", 0, start) + 1))
                ltrim_next = strip_after
                continue
            literal, pos = self._literal(pos)
            out.append(_Lit(_lstrip(literal) if ltrim else literal))
            can_trim_prev = True
        return out

    def _literal(self, pos: int) -> tuple[str, int]:
        """One BareStringLiteral token: `$`/`%` alone (or the escapes $${ and %%{), or a run of other characters;
        then the newline that ends it, if any."""
        text = self.text
        if text.startswith(("$${", "%%{"), pos):
            value, pos = text[pos + 1:pos + 3], pos + 3
        elif text[pos] in "$%":
            value, pos = text[pos], pos + 1
        else:
            run = _LITERAL_RUN.match(text, pos)
            assert run is not None
            value, pos = run.group(), run.end()
        if text.startswith("\r\n", pos):
            value, pos = value + "\r\n", pos + 2
        elif text.startswith("\n", pos):
            value, pos = value + "\n", pos + 1
        elif text.startswith("\r", pos):
            raise self.fail(pos, "a carriage return not followed by a newline")
        return value, pos

    def _sequence(self, pos: int, start: int) -> tuple[tuple[tuple[str, str], ...], int, bool]:
        """The tokens of one ${...} or %{...} up to its closing brace; whether it closes with ~}."""
        text = self.text
        toks: list[tuple[str, str]] = []
        while True:
            if pos >= len(text):
                raise self.fail(start, "unclosed template sequence")
            char = text[pos]
            if char in " \t\r\n":
                pos += 1
            elif text.startswith("~}", pos):
                return tuple(toks), pos + 2, True
            elif char == "}":
                return tuple(toks), pos + 1, False
            elif char in ".[](),!":
                toks.append(("punct", char))
                pos += 1
            elif char == '"':
                value, pos = self._string(pos)
                toks.append(("string", value))
            elif (ident := _IDENT.match(text, pos)) is not None:
                toks.append(("ident", ident.group()))
                pos = ident.end()
            else:
                raise self.fail(pos, f"unsupported syntax {text[pos:pos + 12]!r} in a template sequence "
                                     "(supported: references, jsonencode, join, for, if)")

    def _string(self, pos: int) -> tuple[str, int]:
        text, i = self.text, pos + 1
        out: list[str] = []
        escapes = {'"': '"', "\\": "\\", "n": "\n", "t": "\t", "r": "\r"}
        while i < len(text):
            char = text[i]
            if char == '"':
                return "".join(out), i + 1
            if char == "\n":
                break
            if text.startswith(("${", "%{"), i):
                raise self.fail(i, "template sequences inside a quoted string are not supported")
            if char == "\\":
                if i + 1 >= len(text) or text[i + 1] not in escapes:
                    raise self.fail(i, f"unsupported escape {text[i:i + 2]!r} in a quoted string")
                out.append(escapes[text[i + 1]])
                i += 2
                continue
            out.append(char)
            i += 1
        raise self.fail(pos, "unterminated quoted string")


# --- parsing ----------------------------------------------------------------------------------------------------

class _Parser:
    def __init__(self, tokens: list[_Lit | _Seq], name: str) -> None:
        self.tokens, self.name, self.pos = tokens, name, 0

    def fail(self, line: int, message: str) -> TemplateError:
        return TemplateError(f"{self.name}:{line}: {message}")

    def parse(self) -> tuple[Node, ...]:
        nodes, end = self._nodes()
        if end is not None:
            raise self.fail(end[1], f"%{{ {end[0]} }} without its opening directive")
        return nodes

    def _nodes(self) -> tuple[tuple[Node, ...], tuple[str, int] | None]:
        """Nodes up to the end of the template or to an else/endfor/endif, which is returned with its line."""
        out: list[Node] = []
        while self.pos < len(self.tokens):
            tok = self.tokens[self.pos]
            self.pos += 1
            if isinstance(tok, _Lit):
                if out and isinstance(out[-1], str):
                    out[-1] += tok.text
                elif tok.text:
                    out.append(tok.text)
            elif tok.kind == "interp":
                out.append(Interp(self._interp(tok)))
            else:
                words = tok.tokens
                keyword = words[0][1] if words and words[0][0] == "ident" else None
                if keyword in ("else", "endfor", "endif"):
                    if len(words) != 1:
                        raise self.fail(tok.line, f"extra characters after %{{ {keyword} }}")
                    return tuple(out), (keyword, tok.line)
                if keyword == "for":
                    out.append(self._for(tok))
                elif keyword == "if":
                    out.append(self._if(tok))
                else:
                    raise self.fail(tok.line, "unsupported template directive (supported: for, if, else, endfor, "
                                              "endif)")
        return tuple(out), None

    def _for(self, tok: _Seq) -> For:
        words = list(tok.tokens[1:])
        if (len(words) >= 4 and words[0][0] == "ident" and words[1] == ("punct", ",") and words[2][0] == "ident"
                and words[3] == ("ident", "in")):
            key, value, rest = words[0][1], words[2][1], words[4:]
        elif len(words) >= 2 and words[0][0] == "ident" and words[1] == ("ident", "in"):
            key, value, rest = None, words[0][1], words[2:]
        else:
            raise self.fail(tok.line, "expected %{ for x in ref } or %{ for k, v in ref }")
        collection = self._ref(rest, tok.line)
        body, end = self._nodes()
        if end is None or end[0] != "endfor":
            raise self.fail(tok.line, "%{ for } without its %{ endfor }")
        return For(key, value, collection, body)

    def _if(self, tok: _Seq) -> If:
        words = list(tok.tokens[1:])
        negate = bool(words) and words[0] == ("punct", "!")
        cond = self._ref(words[1:] if negate else words, tok.line)
        then, end = self._nodes()
        otherwise: tuple[Node, ...] = ()
        if end is not None and end[0] == "else":
            otherwise, end = self._nodes()
        if end is None or end[0] != "endif":
            raise self.fail(tok.line, "%{ if } without its %{ endif }")
        return If(cond, negate, then, otherwise)

    def _interp(self, tok: _Seq) -> Expr:
        words = list(tok.tokens)
        if len(words) >= 2 and words[0][0] == "ident" and words[1] == ("punct", "("):
            name = words[0][1]
            if words[-1] != ("punct", ")"):
                raise self.fail(tok.line, f"unsupported expression after {name}(...)")
            inner = words[2:-1]
            if name == "jsonencode":
                return Call(name, "", self._ref(inner, tok.line))
            if name == "join" and len(inner) >= 3 and inner[0][0] == "string" and inner[1] == ("punct", ","):
                return Call(name, inner[0][1], self._ref(inner[2:], tok.line))
            raise self.fail(tok.line, f"unsupported function call {name}(...) (supported: jsonencode(ref), "
                                      'join("separator", ref))')
        return self._ref(words, tok.line)

    def _ref(self, words: Sequence[tuple[str, str]], line: int) -> Ref:
        if not words or words[0][0] != "ident":
            raise self.fail(line, "expected a variable reference")
        path: list[str] = []
        i = 1
        while i < len(words):
            if words[i] == ("punct", ".") and i + 1 < len(words) and words[i + 1][0] == "ident":
                path.append(words[i + 1][1])
                i += 2
            elif (words[i] == ("punct", "[") and i + 2 < len(words) and words[i + 1][0] == "string"
                  and words[i + 2] == ("punct", "]")):
                path.append(words[i + 1][1])
                i += 3
            else:
                shown = " ".join(w[1] for w in words)
                raise self.fail(line, f"unsupported expression {shown!r} (supported: name, name.attr, "
                                      'name["key"])')
        return Ref(words[0][1], tuple(path), line)


# --- evaluation -------------------------------------------------------------------------------------------------

class Template:
    """A parsed template. `render(variables)` is Terraform's templatefile(path, variables)."""

    def __init__(self, text: str, name: str = "<template>") -> None:
        self.name = name
        self.nodes = _Parser(_Scanner(text, name).tokens(), name).parse()

    @property
    def names(self) -> set[str]:
        """The variables the template references (loop variables excluded), in every branch."""
        found: set[str] = set()

        def walk(nodes: Sequence[Node], bound: frozenset[str]) -> None:
            for node in nodes:
                if isinstance(node, Interp):
                    ref = node.expr.arg if isinstance(node.expr, Call) else node.expr
                    if ref.root not in bound:
                        found.add(ref.root)
                elif isinstance(node, For):
                    if node.collection.root not in bound:
                        found.add(node.collection.root)
                    walk(node.body, bound | {node.value} | ({node.key} if node.key else set()))
                elif isinstance(node, If):
                    if node.cond.root not in bound:
                        found.add(node.cond.root)
                    walk(node.then, bound)
                    walk(node.otherwise, bound)

        walk(self.nodes, frozenset())
        return found

    def render(self, variables: Mapping[str, Any]) -> str:
        for key in variables:
            if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", key):
                raise TemplateError(f"{self.name}: invalid template variable name {key!r}")
        missing = sorted(self.names - set(variables))
        if missing:
            raise TemplateError(f"{self.name}: vars map does not contain key {missing[0]!r}")
        out: list[str] = []
        self._render(self.nodes, dict(variables), out)
        return "".join(out)

    def fail(self, line: int, message: str) -> TemplateError:
        return TemplateError(f"{self.name}:{line}: {message}")

    def _render(self, nodes: Sequence[Node], scope: dict[str, Any], out: list[str]) -> None:
        for node in nodes:
            if isinstance(node, str):
                out.append(node)
            elif isinstance(node, Interp):
                out.append(self._interp(node.expr, scope))
            elif isinstance(node, For):
                items = self._items(node.collection, scope)
                for key, value in items:
                    inner = {**scope, node.value: value}
                    if node.key is not None:
                        inner[node.key] = key
                    self._render(node.body, inner, out)
            else:
                cond = self._get(node.cond, scope)
                if not isinstance(cond, bool):
                    raise self.fail(node.cond.line, f"%{{ if {node.cond} }}: a bool is required, not "
                                                    f"{_kind(cond)}")
                self._render(node.then if cond != node.negate else node.otherwise, scope, out)

    def _get(self, ref: Ref, scope: Mapping[str, Any]) -> Any:
        value = scope[ref.root]
        for i, part in enumerate(ref.path):
            if not isinstance(value, Mapping):
                where = Ref(ref.root, ref.path[:i], ref.line)
                raise self.fail(ref.line, f"{where} is {_kind(value)}: it has no attribute {part!r}")
            if part not in value:
                raise self.fail(ref.line, f"{Ref(ref.root, ref.path[:i + 1], ref.line)} does not exist")
            value = value[part]
        return value

    def _interp(self, expr: Expr, scope: Mapping[str, Any]) -> str:
        if isinstance(expr, Ref):
            return self._string(self._get(expr, scope), expr)
        value = self._get(expr.arg, scope)
        if expr.name == "jsonencode":
            try:
                return jsonencode(value)
            except TypeError as exc:
                raise self.fail(expr.arg.line, f"jsonencode({expr.arg}): {exc}") from None
        if not isinstance(value, list | tuple):
            raise self.fail(expr.arg.line, f"join(..., {expr.arg}): a list is required, not {_kind(value)}")
        return expr.separator.join(self._string(v, expr.arg) for v in value)

    def _string(self, value: Any, ref: Ref) -> str:
        if isinstance(value, str):
            return value
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int | float):
            return _number(value)
        raise self.fail(ref.line, f"${{{ref}}}: cannot include {_kind(value)} in a string template")

    def _items(self, ref: Ref, scope: Mapping[str, Any]) -> list[tuple[Any, Any]]:
        value = self._get(ref, scope)
        if isinstance(value, list | tuple):
            return list(enumerate(value))
        if isinstance(value, Mapping):
            return [(k, value[k]) for k in sorted(value)]
        raise self.fail(ref.line, f"%{{ for ... in {ref} }}: a list or map is required, not {_kind(value)}")


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a bool"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "a map"
    if isinstance(value, list | tuple):
        return "a list"
    return f"a {type(value).__name__} (not a Terraform value)"


def _number(value: int | float) -> str:
    """A number as Terraform writes it: no exponent, no trailing `.0`."""
    if isinstance(value, int):
        return str(value)
    if value != value or value in (float("inf"), float("-inf")):
        raise TypeError(f"{value} is not a Terraform number")
    text = format(Decimal(repr(value)), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


_JSON_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def jsonencode(value: Any) -> str:
    """Terraform's jsonencode: compact, keys sorted, numbers without exponent, non-ASCII kept, <>& and U+2028/2029
    escaped. TypeError for what is no Terraform value."""

    def encode(v: Any) -> str:
        if v is None:
            return "null"
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return _number(v)
        if isinstance(v, str):
            return json.dumps(v, ensure_ascii=False)
        if isinstance(v, list | tuple):
            return "[" + ",".join(encode(x) for x in v) + "]"
        if isinstance(v, Mapping):
            if not all(isinstance(k, str) for k in v):
                raise TypeError("map keys must be strings")
            return "{" + ",".join(json.dumps(k, ensure_ascii=False) + ":" + encode(v[k]) for k in sorted(v)) + "}"
        raise TypeError(f"cannot encode {_kind(v)}")

    return re.sub("[<>&\u2028\u2029]", lambda m: _JSON_ESCAPES[m.group()], encode(value))


@cache
def load(name: str) -> Template:
    """The template terraform/templates/<name>.tftpl."""
    return Template((TEMPLATES / f"{name}.tftpl").read_text(encoding="utf-8"), f"{name}.tftpl")


def render(name: str, variables: Mapping[str, Any]) -> str:
    """templatefile("terraform/templates/<name>.tftpl", variables)."""
    return load(name).render(variables)


def template_names() -> list[str]:
    """Every template in terraform/templates/, by name (without .tftpl)."""
    return sorted(p.name.removesuffix(".tftpl") for p in TEMPLATES.glob("*.tftpl"))


def yaml_safe(text: str) -> bool:
    """Whether YAML reads `jsonencode(text)` back as `text`. JSON (Terraform's jsonencode included) escapes none of
    DEL, the C1 controls, U+FFFE/FFFF and lone surrogates, which PyYAML (YAML 1.1) refuses even inside a
    double-quoted string, nor NEL (U+0085), which YAML 1.1 reads as a line break and folds into a space. The
    modules interpolate only names, addresses, paths and PEM text, all far narrower than this."""
    return not any(c == "\x7f" or "\x80" <= c <= "\x9f" or c in "\ufffe\uffff" or unicodedata.category(c) == "Cs"
                   for c in text)


# --- the modules' locals, in Python ---------------------------------------------------------------------------

Files: TypeAlias = dict[str, dict[str, str]]  # node -> path -> content


@dataclass
class Rendered:
    """What a module outputs: files, secret_files, units, user_data per node, and its other outputs (`extra`).

    `calls` lists each template rendered with the names it was given, to compare with the module's templatefile
    calls."""

    files: Files = field(default_factory=dict)
    secret_files: Files = field(default_factory=dict)
    secret_owners: dict[str, tuple[str, str]] = field(default_factory=dict)  # path -> (owner, mode)
    units: dict[str, list[str]] = field(default_factory=dict)
    packages: dict[str, list[str]] = field(default_factory=dict)
    user_data: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    calls: set[tuple[str, frozenset[str]]] = field(default_factory=set)

    def render(self, name: str, variables: Mapping[str, Any]) -> str:
        self.calls.add((name, frozenset(variables)))
        return render(name, variables)

    def add(self, node: str, files: Mapping[str, str], secrets: Mapping[str, tuple[str, str, str]] = {}) -> None:
        self.files.setdefault(node, {}).update(files)
        self.secret_files.setdefault(node, {})
        for path, (content, owner, mode) in secrets.items():
            self.secret_files[node][path] = content
            self.secret_owners[path] = (owner, mode)

    def all_files(self) -> dict[str, str]:
        """Every file of every node, secrets included: path -> content."""
        out: dict[str, str] = {}
        for files in (*self.files.values(), *self.secret_files.values()):
            out.update(files)
        return out

    def finish(self, node_names: Sequence[str], venv: str, package: str, tokens_dir: Mapping[str, str] | None) -> None:
        """user_data for every node, as the modules' `user_data` local builds it."""
        for n in node_names:
            self.files.setdefault(n, {})
            self.secret_files.setdefault(n, {})
            packages = self.packages[n]
            commands: list[list[str]] = []
            if "etcd-server" in packages:
                commands += [["systemctl", "disable", "--now", "etcd.service"], ["systemctl", "mask", "etcd.service"]]
            if "python3-venv" in packages:
                commands += [["python3", "-m", "venv", venv], [f"{venv}/bin/pip", "install", "--no-cache-dir", package]]
            if tokens_dir is not None:
                commands.append(["install", "-d", "-m", "0750", "-o", "root", "-g", "meshcast", tokens_dir[n]])
            commands += [["systemctl", "daemon-reload"], ["systemctl", "enable", "--now", *self.units[n]]]
            files = [{"path": p, "content": c, "owner": "root:root", "mode": "0644"}
                     for p, c in sorted(self.files[n].items())]
            files += [{"path": p, "content": c, "owner": self.secret_owners[p][0], "mode": self.secret_owners[p][1]}
                      for p, c in sorted(self.secret_files[n].items())]
            self.user_data[n] = self.render("cloud-init.yaml", {
                "hostname": n, "packages": packages, "files": files, "commands": commands})


def _merge_defaults(value: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """An object variable with its optional() attributes filled in, as Terraform converts it."""
    return {**defaults, **{k: v for k, v in value.items() if v is not None or k not in defaults}}


def _root(root_dir: str, node: str) -> str:
    return "" if root_dir == "" else f"{root_dir}/{node}"


def render_global(v: Mapping[str, Any]) -> Rendered:
    """terraform/modules/global for the variables `v` (its variable names; optional ones may be left out)."""
    out = Rendered()
    venv = v.get("meshcast_venv", "/opt/meshcast/venv")
    root_dir, log_level = v.get("root_dir", ""), v.get("log_level", "info")
    timers = _merge_defaults(v.get("etcd_timers", {}), {"heartbeat_ms": 100, "election_ms": 1000})
    cp = _merge_defaults(v["global_cp"], {"api_port": 5681})
    members = [_merge_defaults(m, {"client_port": 2379, "peer_port": 2380, "metrics_port": 2381})
               for m in v["etcd_members"]]
    tls, keys = v.get("etcd_tls"), v.get("etcd_tls_keys") or {}
    resources = list(v.get("resources", []))
    scheme = "https" if tls else "http"
    meshcast, python = f"{venv}/bin/meshcast", f"{venv}/bin/python"
    nodes = list(dict.fromkeys([m["name"] for m in members] + [cp["name"]]))
    root = {n: _root(root_dir, n) for n in nodes}
    cr = root[cp["name"]]
    client_urls = [f"{scheme}://{m['address']}:{m['client_port']}" for m in members]
    initial_cluster = ",".join(f"{m['name']}={scheme}://{m['address']}:{m['peer_port']}" for m in members)
    cp_etcd = ",".join(client_urls)
    cp_url = f"http://127.0.0.1:{cp['api_port']}"
    client_dir = f"{cr}/etc/meshcast/etcd-client"
    client_tls = {"tls": tls is not None, "ca_file": f"{client_dir}/ca.crt", "cert_file": f"{client_dir}/client.crt",
                  "key_file": f"{client_dir}/client.key"}
    resource_files = [f"{cr}/etc/meshcast/resources/{i:02d}.yaml" for i in range(len(resources))]

    for m in members:
        r, name = root[m["name"]], m["name"]
        files = {
            f"{r}/etc/meshcast/etcd.yaml": out.render("etcd.yaml", {
                "name": name, "data_dir": f"{r}/var/lib/meshcast/etcd",
                "listen_client_urls": f"{scheme}://{m['address']}:{m['client_port']}",
                "advertise_client_urls": f"{scheme}://{m['address']}:{m['client_port']}",
                "listen_peer_urls": f"{scheme}://{m['address']}:{m['peer_port']}",
                "advertise_peer_urls": f"{scheme}://{m['address']}:{m['peer_port']}",
                "initial_cluster": initial_cluster, "cluster_token": v.get("etcd_cluster_token", "meshcast-global"),
                "metrics_url": f"http://127.0.0.1:{m['metrics_port']}",
                "heartbeat_interval": timers["heartbeat_ms"], "election_timeout": timers["election_ms"],
                "tls": tls is not None, "cert_file": f"{r}/etc/meshcast/etcd/member.crt",
                "key_file": f"{r}/etc/meshcast/etcd/member.key", "ca_file": f"{r}/etc/meshcast/etcd/ca.crt"}),
            f"{r}/etc/systemd/system/meshcast-etcd.service": out.render("meshcast-etcd.service", {
                "description": f"Meshcast global etcd, member {name}", "config_file": f"{r}/etc/meshcast/etcd.yaml"}),
        }
        secrets = {}
        if tls:
            files[f"{r}/etc/meshcast/etcd/ca.crt"] = tls["ca_cert"]
            files[f"{r}/etc/meshcast/etcd/member.crt"] = tls["member_certs"][name]
            secrets[f"{r}/etc/meshcast/etcd/member.key"] = (keys["members"][name], "root:etcd", "0640")
        out.add(name, files, secrets)

    files = {
        f"{cr}/etc/meshcast/global-cp.yaml": out.render("global-cp.yaml", {
            "etcd_endpoints": cp_etcd, "tls": tls is not None, "etcd_ca_file": client_tls["ca_file"],
            "etcd_cert_file": client_tls["cert_file"], "etcd_key_file": client_tls["key_file"],
            "api_addr": f"127.0.0.1:{cp['api_port']}",
            "state_dir": f"{cr}/var/lib/meshcast/global", "log_level": log_level}),
        f"{cr}/etc/systemd/system/meshcast-global-cp.service": out.render("meshcast-global-cp.service", {
            "after": ["meshcast-etcd-bootstrap.service"], "env_file": f"{cr}/etc/meshcast/global-cp.env",
            "meshcast": meshcast, "config_file": f"{cr}/etc/meshcast/global-cp.yaml"}),
        f"{cr}/usr/local/lib/meshcast/etcd-bootstrap.py": out.render("etcd-bootstrap.py", {}),
        f"{cr}/etc/systemd/system/meshcast-etcd-bootstrap.service": out.render("meshcast-etcd-bootstrap.service", {
            "cluster": "the global etcd", "after": [], "env_file": f"{cr}/etc/meshcast/global-cp.env",
            "python": python, "script": f"{cr}/usr/local/lib/meshcast/etcd-bootstrap.py", "endpoints": cp_etcd,
            **client_tls, "users_file": f"{cr}/etc/meshcast/etcd-users.json"}),
    }
    secrets = {
        f"{cr}/etc/meshcast/global-cp.env": (out.render("env", {
            "variables": {"MESHCAST_ETCD_PASSWORD": v["etcd_root_password"]}}), "root:root", "0600"),
        f"{cr}/etc/meshcast/etcd-users.json": (jsonencode(v["zone_etcd_passwords"]), "root:meshcast", "0640"),
    }
    if tls:
        files[f"{client_dir}/ca.crt"] = tls["ca_cert"]
        files[f"{client_dir}/client.crt"] = tls["client_cert"]
        secrets[f"{client_dir}/client.key"] = (keys["client"], "root:meshcast", "0640")
    if resources:
        files[f"{cr}/etc/systemd/system/meshcast-apply.service"] = out.render("meshcast-apply.service", {
            "meshcast": meshcast, "cp_url": cp_url, "resource_files": resource_files})
        files.update(zip(resource_files, resources, strict=True))
    out.add(cp["name"], files, secrets)

    member_names = {m["name"] for m in members}
    for n in nodes:
        out.units[n] = (["meshcast-etcd.service"] if n in member_names else []) + (
            ["meshcast-etcd-bootstrap.service", "meshcast-global-cp.service",
             *(["meshcast-apply.service"] if resources else [])] if n == cp["name"] else [])
        out.packages[n] = (["etcd-server"] if n in member_names else []) + (
            ["python3-venv"] if n == cp["name"] else [])
    out.finish(nodes, venv, v["meshcast_package"], None)
    out.extra.update(etcd_endpoints=client_urls, global_cp_url=cp_url)
    return out


_ZONE_CP = {"listen_address": "0.0.0.0", "api_port": 5681, "dp_port": 5678, "etcd_client_port": 2379,
            "etcd_peer_port": 2380, "etcd_metrics_port": 2381}
_INGRESS = {"listen_address": "0.0.0.0", "port": 10001, "admin_port": 9902}
_GATEWAY_NODE = {"admin_port": 9901, "router_id": None, "bgp_local_address": None}
_GATEWAY = {"http_port": 80, "https_port": 443, "drain_timeout": 30, "withdraw_delay": 2, "certificates": []}
_ROUTE = {"hosts": [], "path_prefix": "/"}
_BGP: dict[str, Any] = {"role": "primary", "med": None, "as_path_prepend": 0, "communities": [], "graceful_restart": 0}
_PEER = {"hold_time": 9, "description": ""}
_INSTANCE = {"protocol": "http", "tags": {}, "outbound": []}


def render_region(v: Mapping[str, Any]) -> Rendered:
    """terraform/modules/region for the variables `v` (its variable names; optional ones may be left out)."""
    out = Rendered()
    venv = v.get("meshcast_venv", "/opt/meshcast/venv")
    root_dir, log_level, mesh = v.get("root_dir", ""), v.get("log_level", "info"), v.get("mesh", "default")
    zone = v["region"]
    cp = _merge_defaults(v["zone_cp"], _ZONE_CP)
    ingresses = [_merge_defaults(i, _INGRESS) for i in v.get("ingresses", [])]
    gateways = [_merge_defaults(g, _GATEWAY_NODE) for g in v.get("gateways", [])]
    gw = _merge_defaults(v.get("gateway") or {"name": "edge", "routes": []}, _GATEWAY)
    gw["routes"] = [_merge_defaults(r, _ROUTE) for r in gw["routes"]]
    bgp = _merge_defaults(v["bgp"], _BGP) if v.get("bgp") else None
    if bgp is not None:
        bgp["peers"] = [_merge_defaults(p, _PEER) for p in bgp["peers"]]
    hosts = [{**h, "instances": [_merge_defaults(i, _INSTANCE) for i in h["instances"]]}
             for h in v.get("service_hosts", [])]
    anycast = list(v.get("anycast_addresses", []))
    etcd_store = v.get("zone_store", "etcd") == "etcd"
    global_tls, cp_tls = v.get("global_etcd_tls"), v.get("cp_tls")
    meshcast, python = f"{venv}/bin/meshcast", f"{venv}/bin/python"
    cp_url = f"{'https' if cp_tls else 'http'}://{cp['address']}:{cp['api_port']}"
    nodes = list(dict.fromkeys([cp["name"], *(i["name"] for i in ingresses), *(g["name"] for g in gateways),
                                *(h["name"] for h in hosts)]))
    root = {n: _root(root_dir, n) for n in nodes}
    cr = root[cp["name"]]
    zone_etcd, zone_peer = f"http://127.0.0.1:{cp['etcd_client_port']}", f"http://127.0.0.1:{cp['etcd_peer_port']}"
    global_etcd = ",".join(v["global_etcd_endpoints"])
    global_dir = f"{cr}/etc/meshcast/global-etcd"
    cp_after = ["meshcast-etcd.service", "meshcast-etcd-bootstrap.service"] if etcd_store else []

    # the zone control plane
    files = {
        f"{cr}/etc/meshcast/zone-cp.yaml": out.render("zone-cp.yaml", {
            "zone": zone, "etcd_store": etcd_store, "etcd_endpoints": zone_etcd, "global_etcd": global_etcd,
            "global_tls": global_tls is not None, "global_etcd_ca_file": f"{global_dir}/ca.crt",
            "global_etcd_cert_file": f"{global_dir}/client.crt", "global_etcd_key_file": f"{global_dir}/client.key",
            "global_etcd_user": f"meshcast-zone-{zone}", "api_addr": f"{cp['listen_address']}:{cp['api_port']}",
            "dp_addr": f"{cp['listen_address']}:{cp['dp_port']}", "state_dir": f"{cr}/var/lib/meshcast/zone",
            "tls": cp_tls is not None, "tls_cert": f"{cr}/etc/meshcast/cp/tls.crt",
            "tls_key": f"{cr}/etc/meshcast/cp/tls.key", "log_level": log_level}),
        f"{cr}/etc/systemd/system/meshcast-zone-cp.service": out.render("meshcast-zone-cp.service", {
            "zone": zone, "after": cp_after, "env_file": f"{cr}/etc/meshcast/zone-cp.env", "meshcast": meshcast,
            "config_file": f"{cr}/etc/meshcast/zone-cp.yaml"}),
    }
    if etcd_store:
        files.update({
            f"{cr}/etc/meshcast/etcd.yaml": out.render("etcd.yaml", {
                "name": cp["name"], "data_dir": f"{cr}/var/lib/meshcast/etcd", "listen_client_urls": zone_etcd,
                "advertise_client_urls": zone_etcd, "listen_peer_urls": zone_peer, "advertise_peer_urls": zone_peer,
                "initial_cluster": f"{cp['name']}={zone_peer}", "cluster_token": f"meshcast-zone-{zone}",
                "metrics_url": f"http://127.0.0.1:{cp['etcd_metrics_port']}", "heartbeat_interval": 100,
                "election_timeout": 1000, "tls": False, "cert_file": "", "key_file": "", "ca_file": ""}),
            f"{cr}/etc/systemd/system/meshcast-etcd.service": out.render("meshcast-etcd.service", {
                "description": f"Meshcast zone etcd (zone {zone})", "config_file": f"{cr}/etc/meshcast/etcd.yaml"}),
            f"{cr}/usr/local/lib/meshcast/etcd-bootstrap.py": out.render("etcd-bootstrap.py", {}),
            f"{cr}/etc/systemd/system/meshcast-etcd-bootstrap.service": out.render("meshcast-etcd-bootstrap.service", {
                "cluster": "the zone's etcd", "after": ["meshcast-etcd.service"],
                "env_file": f"{cr}/etc/meshcast/zone-cp.env", "python": python,
                "script": f"{cr}/usr/local/lib/meshcast/etcd-bootstrap.py", "endpoints": zone_etcd,
                "tls": False, "ca_file": "", "cert_file": "", "key_file": "",
                "users_file": f"{cr}/etc/meshcast/etcd-users.json"}),
            f"{cr}/etc/meshcast/etcd-users.json": "{}\n",
        })
    env = {"MESHCAST_GLOBAL_ETCD_PASSWORD": v["global_etcd_password"]}
    if etcd_store:
        env["MESHCAST_ETCD_PASSWORD"] = v.get("zone_etcd_root_password") or ""
    secrets = {f"{cr}/etc/meshcast/zone-cp.env": (out.render("env", {"variables": env}), "root:root", "0600")}
    if global_tls:
        files[f"{global_dir}/ca.crt"] = global_tls["ca_cert"]
        files[f"{global_dir}/client.crt"] = global_tls["client_cert"]
        secrets[f"{global_dir}/client.key"] = (v["global_etcd_client_key"], "root:meshcast", "0640")
    if cp_tls:
        files[f"{cr}/etc/meshcast/cp/tls.crt"] = cp_tls["cert"]
        secrets[f"{cr}/etc/meshcast/cp/tls.key"] = (v["cp_tls_key"], "root:meshcast", "0640")
    out.add(cp["name"], files, secrets)
    if cp_tls:
        for n in nodes:
            out.add(n, {f"{root[n]}/etc/meshcast/cp/ca.crt": cp_tls["ca_cert"]})

    # zone ingresses
    for i in ingresses:
        r = root[i["name"]]
        out.add(i["name"], {
            f"{r}/etc/meshcast/ingress.yaml": out.render("ingress.yaml", {
                "cp_url": cp_url, "cp_tls": cp_tls is not None, "cp_ca_file": f"{r}/etc/meshcast/cp/ca.crt",
                "token_file": f"{r}/etc/meshcast/tokens/ingress.token",
                "addr": f"{i['listen_address']}:{i['port']}", "advertise_addr": f"{i['address']}:{i['port']}",
                "admin_addr": f"127.0.0.1:{i['admin_port']}", "state_dir": f"{r}/var/lib/meshcast/ingress",
                "log_level": log_level}),
            f"{r}/etc/systemd/system/meshcast-ingress.service": out.render("meshcast-ingress.service", {
                "meshcast": meshcast, "config_file": f"{r}/etc/meshcast/ingress.yaml",
                "token_file": f"{r}/etc/meshcast/tokens/ingress.token"}),
        })

    # edge gateways
    gw_tls_dir = f"{root[gateways[0]['name']] if gateways else ''}/etc/meshcast/gateway-tls"
    mesh_gateway = out.render("meshgateway.yaml", {
        "region": zone, "mesh": mesh, "name": gw["name"], "addresses": anycast, "http_port": gw["http_port"],
        "https": bool(gw["certificates"]), "https_port": gw["https_port"],
        "certificates": [{"hosts": c["hosts"], "cert_file": f"{gw_tls_dir}/{c['name']}.crt",
                          "key_file": f"{gw_tls_dir}/{c['name']}.key"} for c in gw["certificates"]],
        "routes": [{"hosts": r["hosts"], "path_prefix": r["path_prefix"], "to": r["to"]} for r in gw["routes"]]})
    bgp_files: dict[str, str] = {}
    for g in gateways:
        r = root[g["name"]]
        files = {
            f"{r}/etc/meshcast/gateway.yaml": out.render("gateway.yaml", {
                "cp_url": cp_url, "cp_tls": cp_tls is not None, "cp_ca_file": f"{r}/etc/meshcast/cp/ca.crt",
                "token_file": f"{r}/etc/meshcast/tokens/gateway.token",
                "dataplane_file": f"{r}/etc/meshcast/gateway.dataplane.yaml",
                "state_dir": f"{r}/var/lib/meshcast/gateway", "admin_addr": f"127.0.0.1:{g['admin_port']}",
                "withdraw_delay": gw["withdraw_delay"], "drain_timeout": gw["drain_timeout"],
                "log_level": log_level}),
            f"{r}/etc/meshcast/gateway.dataplane.yaml": out.render("gateway-dataplane.yaml", {
                "mesh": mesh, "name": g["name"], "address": g["address"], "gateway": gw["name"]}),
            f"{r}/etc/meshcast/resources/meshgateway.yaml": mesh_gateway,
            f"{r}/etc/systemd/system/meshcast-gateway.service": out.render("meshcast-gateway.service", {
                "meshcast": meshcast, "config_file": f"{r}/etc/meshcast/gateway.yaml",
                "token_file": f"{r}/etc/meshcast/tokens/gateway.token",
                "timeout_stop_sec": _ceil(gw["withdraw_delay"] + gw["drain_timeout"]) + 15}),
            f"{r}/etc/systemd/system/meshcast-anycast.service": out.render("meshcast-anycast.service", {
                "cidrs": [f"{a}/32" for a in anycast]}),
        }
        if bgp is not None:
            bgp_files[g["name"]] = out.render("bgp-region.yaml", {
                "region": zone, "router_id": g["router_id"] or g["address"], "local_as": bgp["local_asn"],
                "role": bgp["role"], "prefixes": bgp["prefixes"], "has_med": bgp["med"] is not None,
                "med": bgp["med"] if bgp["med"] is not None else 0, "communities": bgp["communities"],
                "as_path_prepend": bgp["as_path_prepend"], "graceful_restart": bgp["graceful_restart"],
                "readiness_url": f"http://127.0.0.1:{g['admin_port']}/ready",
                "state_dir": f"{r}/var/lib/meshcast/bgp",
                "peers": [{"address": p["address"], "asn": p["asn"], "hold_time": p["hold_time"],
                           "description": p["description"], "has_local_address": g["bgp_local_address"] is not None,
                           "local_address": g["bgp_local_address"] or ""} for p in bgp["peers"]]})
            files[f"{r}/etc/meshcast/bgp/{zone}.yaml"] = bgp_files[g["name"]]
            files[f"{r}/etc/systemd/system/meshcast-bgp.service"] = out.render("meshcast-bgp.service", {
                "meshcast": meshcast, "region_file": f"{r}/etc/meshcast/bgp/{zone}.yaml"})
        for c in gw["certificates"]:
            files[f"{r}/etc/meshcast/gateway-tls/{c['name']}.crt"] = c["cert"]
        out.add(g["name"], files, {
            f"{r}/etc/meshcast/gateway-tls/{c['name']}.key": (v["gateway_tls_keys"][c["name"]], "root:meshcast",
                                                                "0640") for c in gw["certificates"]})

    # service hosts
    for h in hosts:
        r = root[h["name"]]
        files = {f"{r}/etc/systemd/system/meshcast-sidecar@.service": out.render("meshcast-sidecar@.service", {
            "meshcast": meshcast, "config_dir": f"{r}/etc/meshcast/dataplanes", "token_dir": f"{r}/etc/meshcast/tokens",
            "timeout_stop_sec": _ceil(v.get("sidecar_drain_timeout", 10)) + 10})}
        for i in h["instances"]:
            files[f"{r}/etc/meshcast/dataplanes/{i['name']}.yaml"] = out.render("sidecar.yaml", {
                "name": i["name"], "cp_url": cp_url, "cp_tls": cp_tls is not None,
                "cp_ca_file": f"{r}/etc/meshcast/cp/ca.crt", "token_file": f"{r}/etc/meshcast/tokens/{i['name']}.token",
                "dataplane_file": f"{r}/etc/meshcast/dataplanes/{i['name']}.dataplane.yaml",
                "state_dir": f"{r}/var/lib/meshcast/dataplanes/{i['name']}",
                "admin_addr": f"127.0.0.1:{i['admin_port']}", "drain_timeout": v.get("sidecar_drain_timeout", 10),
                "log_level": log_level})
            files[f"{r}/etc/meshcast/dataplanes/{i['name']}.dataplane.yaml"] = out.render("dataplane.yaml", {
                "mesh": mesh, "name": i["name"], "address": h["address"],
                "inbound": [{"port": i["port"], "app_port": i["app_port"], "service": i["service"],
                             "protocol": i["protocol"], "tags": i["tags"]}],
                "has_outbound": bool(i["outbound"]),
                "outbound": [{"port": o["port"], "service": o["service"]} for o in i["outbound"]]})
        out.add(h["name"], files)

    for n, extra in v.get("extra_files", {}).items():
        out.add(n, {f"{root[n]}{p}": c for p, c in extra.items()})
    ingress_names, gateway_names = {i["name"] for i in ingresses}, {g["name"] for g in gateways}
    host_units = {h["name"]: [f"meshcast-sidecar@{i['name']}.service" for i in h["instances"]] for h in hosts}
    for n in nodes:
        out.units[n] = [
            *v.get("extra_units", {}).get(n, []),
            *([*cp_after, "meshcast-zone-cp.service"] if n == cp["name"] else []),
            *(["meshcast-ingress.service"] if n in ingress_names else []),
            *(["meshcast-anycast.service", "meshcast-gateway.service", *(["meshcast-bgp.service"] if bgp else [])]
              if n in gateway_names else []),
            *host_units.get(n, []),
        ]
        out.packages[n] = (["etcd-server"] if n == cp["name"] and (etcd_store or global_tls) else []) + [
            "python3-venv"]
    out.finish(nodes, venv, v["meshcast_package"], {n: f"{root[n]}/etc/meshcast/tokens" for n in nodes})
    out.extra.update(cp_url=cp_url, mesh_gateway=mesh_gateway if gateways else None, bgp_region_files=bgp_files)
    out.extra["tokens"] = {n: [
        *([{"path": f"{root[n]}/etc/meshcast/tokens/ingress.token", "kind": "ingress", "services": []}]
          if n in ingress_names else []),
        *([{"path": f"{root[n]}/etc/meshcast/tokens/gateway.token", "kind": "dataplane", "services": [gw["name"]]}]
          if n in gateway_names else []),
        *({"path": f"{root[n]}/etc/meshcast/tokens/{i['name']}.token", "kind": "dataplane",
           "services": [i["service"]]} for h in hosts if h["name"] == n for i in h["instances"]),
    ] for n in nodes}
    return out


def _ceil(value: float) -> int:
    return int(-(-value // 1))


# --- terraform/examples/local, in Python ----------------------------------------------------------------------

# The local example's `ports` defaults (terraform/examples/local/variables.tf; a test keeps the two equal).
LOCAL_PORTS: dict[str, int] = {
    "global_cp_api": 25681,
    "etcd_1_client": 25701, "etcd_1_peer": 25702, "etcd_1_metrics": 25703,
    "etcd_2_client": 25711, "etcd_2_peer": 25712, "etcd_2_metrics": 25713,
    "etcd_3_client": 25721, "etcd_3_peer": 25722, "etcd_3_metrics": 25723,
    "eu_cp_api": 25801, "eu_cp_dp": 25802, "eu_cp_etcd_client": 25803, "eu_cp_etcd_peer": 25804,
    "eu_cp_etcd_metrics": 25805, "eu_ingress": 25811, "eu_ingress_admin": 25812,
    "eu_gateway_admin": 25821, "eu_gateway_http": 25822, "eu_gateway_https": 25823,
    "eu_web_1": 25831, "eu_web_1_app": 25832, "eu_web_1_admin": 25833, "eu_web_1_backend": 25834,
    "eu_web_1_api": 25835,
    "eu_backend_1": 25841, "eu_backend_1_app": 25842, "eu_backend_1_admin": 25843,
    "us_cp_api": 25901, "us_cp_dp": 25902, "us_cp_etcd_client": 25903, "us_cp_etcd_peer": 25904,
    "us_cp_etcd_metrics": 25905, "us_ingress": 25911, "us_ingress_admin": 25912,
    "us_gateway_admin": 25921, "us_gateway_http": 25922, "us_gateway_https": 25923,
    "us_backend_1": 25941, "us_backend_1_app": 25942, "us_backend_1_admin": 25943,
    "us_api_1": 25951, "us_api_1_app": 25952, "us_api_1_admin": 25953,
}


@dataclass(frozen=True)
class LocalPasswords:
    """The local example's password variables (test values: the example itself has no defaults for them)."""

    etcd_root: str = "local-global-etcd-root-pw"
    zones: Mapping[str, str] = field(default_factory=lambda: {"eu": "local-zone-eu-global-pw",
                                                              "us": "local-zone-us-global-pw"})
    zone_etcd_roots: Mapping[str, str] = field(default_factory=lambda: {"eu": "local-zone-eu-etcd-root",
                                                                        "us": "local-zone-us-etcd-root"})


def local_example_vars(output_dir: Path | str, ports: Mapping[str, int] | None = None, *,
                       tls_dir: Path | str | None = None, passwords: LocalPasswords | None = None,
                       meshcast_venv: str = "/opt/meshcast/venv",
                       ) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The variables terraform/examples/local passes to the global module and to each region module (eu, us),
    without the global module's `resources` (the regions' MeshGateways, known once the regions are rendered)."""
    p = {**LOCAL_PORTS, **(ports or {})}
    pw = passwords or LocalPasswords()
    root = str(Path(output_dir).absolute())
    tls = Path(tls_dir) if tls_dir is not None else None

    def pem(name: str) -> str:
        assert tls is not None
        return (tls / name).read_text()

    members = [{"name": f"etcd-{n}", "address": f"127.0.0.{n + 2}", "client_port": p[f"etcd_{n}_client"],
                "peer_port": p[f"etcd_{n}_peer"], "metrics_port": p[f"etcd_{n}_metrics"]} for n in (1, 2, 3)]
    global_vars: dict[str, Any] = {
        "meshcast_package": "meshcast==0.1.0", "meshcast_venv": meshcast_venv, "root_dir": root,
        "global_cp": {"name": "global-cp", "address": "127.0.0.2", "api_port": p["global_cp_api"]},
        "etcd_members": members,
        "etcd_tls": None if tls is None else {
            "ca_cert": pem("ca.crt"), "member_certs": {m["name"]: pem(f"{m['name']}.crt") for m in members},
            "client_cert": pem("global-cp-etcd-client.crt")},
        "etcd_tls_keys": None if tls is None else {
            "members": {m["name"]: pem(f"{m['name']}.key") for m in members},
            "client": pem("global-cp-etcd-client.key")},
        "etcd_root_password": pw.etcd_root, "zone_etcd_passwords": dict(pw.zones),
    }

    def instance(name: str, service: str, key: str, outbound: list[dict[str, Any]]) -> dict[str, Any]:
        return {"name": name, "service": service, "port": p[key], "app_port": p[f"{key}_app"],
                "admin_port": p[f"{key}_admin"], "tags": {"version": "v1"}, "outbound": outbound}

    instances = {
        "eu": [instance("eu-web-1", "web", "eu_web_1", [{"port": p["eu_web_1_backend"], "service": "backend"},
                                                        {"port": p["eu_web_1_api"], "service": "api"}]),
               instance("eu-backend-1", "backend", "eu_backend_1", [])],
        "us": [instance("us-backend-1", "backend", "us_backend_1", []),
               instance("us-api-1", "api", "us_api_1", [])],
    }
    regions: dict[str, dict[str, Any]] = {}
    for region, net in (("eu", 1), ("us", 2)):
        def address(host: int, net: int = net) -> str:
            return f"127.0.0.{net}{host}"

        regions[region] = {
            "region": region, "meshcast_package": "meshcast==0.1.0", "meshcast_venv": meshcast_venv,
            "root_dir": root,
            "zone_cp": {"name": f"{region}-cp", "address": address(1), "listen_address": address(1),
                        "api_port": p[f"{region}_cp_api"], "dp_port": p[f"{region}_cp_dp"],
                        "etcd_client_port": p[f"{region}_cp_etcd_client"],
                        "etcd_peer_port": p[f"{region}_cp_etcd_peer"],
                        "etcd_metrics_port": p[f"{region}_cp_etcd_metrics"]},
            "zone_store": "etcd", "zone_etcd_root_password": pw.zone_etcd_roots[region],
            "global_etcd_password": pw.zones[region],
            "global_etcd_tls": None if tls is None else {"ca_cert": pem("ca.crt"),
                                                         "client_cert": pem(f"{region}-etcd-client.crt")},
            "global_etcd_client_key": None if tls is None else pem(f"{region}-etcd-client.key"),
            "cp_tls": None if tls is None else {"ca_cert": pem("ca.crt"), "cert": pem(f"{region}-cp.crt")},
            "cp_tls_key": None if tls is None else pem(f"{region}-cp.key"),
            "ingresses": [{"name": f"{region}-ingress", "address": address(2), "listen_address": address(2),
                           "port": p[f"{region}_ingress"], "admin_port": p[f"{region}_ingress_admin"]}],
            "gateways": [{"name": f"{region}-gw", "address": address(3), "admin_port": p[f"{region}_gateway_admin"]}],
            "gateway": {"name": f"edge-{region}", "http_port": p[f"{region}_gateway_http"],
                        "https_port": p[f"{region}_gateway_https"], "routes": [{"to": "web"}]},
            "anycast_addresses": ["127.0.0.100"],
            "service_hosts": [{"name": f"{region}-apps", "address": address(4), "instances": instances[region]}],
        }
    return global_vars, regions


def render_local_example(output_dir: Path | str, ports: Mapping[str, int] | None = None, *,
                         tls_dir: Path | str | None = None, passwords: LocalPasswords | None = None,
                         meshcast_venv: str = "/opt/meshcast/venv") -> dict[str, Rendered]:
    """The local example's modules rendered: {"global": ..., "eu": ..., "us": ...}."""
    global_vars, region_vars = local_example_vars(output_dir, ports, tls_dir=tls_dir, passwords=passwords,
                                                  meshcast_venv=meshcast_venv)
    endpoints = render_global(global_vars).extra["etcd_endpoints"]
    regions = {r: render_region({**v, "global_etcd_endpoints": endpoints}) for r, v in region_vars.items()}
    resources = [regions["eu"].extra["mesh_gateway"], regions["us"].extra["mesh_gateway"]]
    return {"global": render_global({**global_vars, "resources": resources}), **regions}


def local_example_files(output_dir: Path | str, ports: Mapping[str, int] | None = None, *,
                        tls_dir: Path | str | None = None, passwords: LocalPasswords | None = None,
                        meshcast_venv: str = "/opt/meshcast/venv") -> dict[str, str]:
    """Every file `terraform apply` of terraform/examples/local writes (secrets included): absolute path ->
    content, under <output_dir>/<node>/. `ports` overrides any of LOCAL_PORTS; `tls_dir` is the example's tls_dir
    (see make_local_tls)."""
    out: dict[str, str] = {}
    for rendered in render_local_example(output_dir, ports, tls_dir=tls_dir, passwords=passwords,
                                         meshcast_venv=meshcast_venv).values():
        out.update(rendered.all_files())
    return out


def write_files(files: Mapping[str, str], secrets: Sequence[str] = ()) -> None:
    """Write `files` as the local example does: 0644, and 0600 for the paths in `secrets`."""
    for path, content in files.items():
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content, encoding="utf-8")
        target.chmod(0o600 if path in secrets else 0o644)


def make_local_tls(directory: Path, *, members: Sequence[tuple[str, str]] = (
        ("etcd-1", "127.0.0.3"), ("etcd-2", "127.0.0.4"), ("etcd-3", "127.0.0.5")),
        zone_cps: Sequence[tuple[str, str]] = (("eu", "127.0.0.11"), ("us", "127.0.0.21")),
        valid_for: float = 86400.0) -> Path:
    """Write the local example's tls_dir: ca.crt, <member>.crt/.key (server and client auth, SANs its address and
    127.0.0.1), global-cp-etcd-client and <region>-etcd-client .crt/.key (client auth, no common name: etcd would
    take it as the user of requests without a token), <region>-cp.crt/.key (SANs the zone control plane's address,
    127.0.0.1 and localhost). EC P-256."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    lifetime = (now - datetime.timedelta(minutes=5), now + datetime.timedelta(seconds=valid_for))
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "meshcast local example CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(lifetime[0]).not_valid_after(lifetime[1])
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    (directory / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))

    def issue(name: str, subject: x509.Name, ips: Sequence[str], dns: Sequence[str],
              usages: Sequence[x509.ObjectIdentifier]) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(lifetime[0])
                   .not_valid_after(lifetime[1])
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                                  critical=False))
        if ips or dns:
            sans: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address(a)) for a in ips]
            sans += [x509.DNSName(d) for d in dns]
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        (directory / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (directory / f"{name}.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        (directory / f"{name}.key").chmod(0o600)

    server_client = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    for name, address in members:
        # etcd 3.4 checks a peer's client certificate against the address it connects from, and on loopback that
        # is 127.0.0.1 whatever address the member listens on.
        issue(name, x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]), [address, "127.0.0.1"], [],
              server_client)
    no_cn = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshcast etcd clients")])
    issue("global-cp-etcd-client", no_cn, [], [], [ExtendedKeyUsageOID.CLIENT_AUTH])
    for region, address in zone_cps:
        issue(f"{region}-etcd-client", no_cn, [], [], [ExtendedKeyUsageOID.CLIENT_AUTH])
        issue(f"{region}-cp", x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{region}-cp")]),
              [address, "127.0.0.1"], ["localhost"], [ExtendedKeyUsageOID.SERVER_AUTH])
    return directory
