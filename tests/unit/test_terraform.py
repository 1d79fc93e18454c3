"""terraform/: the modules, examples and templates, checked without Terraform.

- Every .tf file parses (python-hcl2); in each module and example every `var.X` is declared, every variable has a
  type and a description and is used, every output is described, and every module call passes only variables the
  module declares and all those it requires.
- Every templatefile() call passes exactly the names its template references, and the Python mirror of the
  modules (tests/support/tftemplate.py) renders the same templates with the same names.
- Rendered for two deployments (the local example on loopback, and two TLS regions with real-looking addresses),
  every file is accepted by what reads it: the --config YAMLs by the click command that runs them, Dataplanes and
  MeshGateways by the resource loader, BGP settings by bgp.settings, etcd's configuration by a list of etcd 3.4's
  keys, cloud-init as #cloud-config YAML, environment files as systemd reads them, and units by
  `systemd-analyze verify`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import click
import hcl2
import pytest
import yaml

from meshcast.cli.configfile import load_config_file
from meshcast.cli.main import cli
from tests.support import tftemplate
from tests.support.tftemplate import (
    TERRAFORM,
    Rendered,
    TemplateError,
    load,
    render_global,
    render_local_example,
    render_region,
)

MODULES = {"global": TERRAFORM / "modules" / "global", "region": TERRAFORM / "modules" / "region"}
EXAMPLES = {"two-regions": TERRAFORM / "examples" / "two-regions", "local": TERRAFORM / "examples" / "local"}
ROOTS = {**{f"modules/{k}": v for k, v in MODULES.items()}, **{f"examples/{k}": v for k, v in EXAMPLES.items()}}
TF_FILES = sorted(TERRAFORM.rglob("*.tf"))


# --- HCL, as python-hcl2 8 gives it: expressions as normalized strings, quoted strings with their quotes -------

@cache
def parse(path: Path) -> dict[str, Any]:
    with path.open() as handle:
        data: dict[str, Any] = hcl2.load(handle)
    return data


def blocks(directory: Path, kind: str) -> Iterator[tuple[str, dict[str, Any], Path]]:
    """(label, body, file) of every `kind "label" {...}` block of the .tf files in `directory`."""
    for path in sorted(directory.glob("*.tf")):
        for block in parse(path).get(kind, []):
            for label, body in block.items():
                if label != "__is_block__":
                    yield label.strip('"'), body, path


def unquote(value: Any) -> str:
    assert isinstance(value, str) and value.startswith('"') and value.endswith('"'), value
    return value[1:-1]


@dataclass(frozen=True)
class Token:
    kind: str  # ident, string, punct
    text: str  # a string's text is its source, quotes included


def tokens(expr: str) -> list[Token]:
    """Tokens of an HCL expression; a quoted string (with any ${...} inside) is one token."""
    out, i = [], 0
    while i < len(expr):
        char = expr[i]
        if char.isspace():
            i += 1
        elif char == '"':
            end = _string_end(expr, i)
            out.append(Token("string", expr[i:end]))
            i = end
        elif re.match(r"[A-Za-z_]", char):
            ident = re.match(r"[A-Za-z_][A-Za-z0-9_-]*", expr[i:])
            assert ident is not None
            out.append(Token("ident", ident.group()))
            i += len(ident.group())
        elif expr.startswith(("=>", "==", "!=", ">=", "<=", "&&", "||", "..."), i):
            out.append(Token("punct", expr[i:i + (3 if expr.startswith("...", i) else 2)]))
            i += len(out[-1].text)
        else:
            out.append(Token("punct", char))
            i += 1
    return out


def _string_end(expr: str, start: int) -> int:
    """The index after the quoted string starting at `start` (nested ${...} may hold strings of their own)."""
    i = start + 1
    while i < len(expr):
        if expr[i] == "\\":
            i += 2
        elif expr[i] == '"':
            return i + 1
        elif expr.startswith(("${", "%{"), i):
            i = _interp_end(expr, i + 2)
        else:
            i += 1
    raise AssertionError(f"unterminated string in {expr!r}")


def _interp_end(expr: str, i: int) -> int:
    depth = 1
    while depth:
        if expr[i] == '"':
            i = _string_end(expr, i)
            continue
        depth += {"{": 1, "}": -1}.get(expr[i], 0)
        i += 1
    return i


def code(value: Any) -> Iterator[str]:
    """The expression code in an hcl2 value: expressions, and the interpolations inside strings (not their
    literal text), recursively."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key != "__is_block__":
                yield from code(item)
    elif isinstance(value, list):
        for item in value:
            yield from code(item)
    elif isinstance(value, str) and value.startswith('"<<'):  # a heredoc: only its interpolations are code
        i = 0
        while (i := value.find("${", i)) >= 0:
            if value[i - 1] != "$":
                end = _interp_end(value, i + 2)
                yield from _code_of(value[i + 2:end - 1])
            i += 2
    elif isinstance(value, str):
        text = value[2:-1] if value.startswith("${") and value.endswith("}") else value
        if text.startswith('"'):
            text = "${" + text + "}"  # a bare quoted string: only its interpolations are code
        yield from _code_of(text)


def _code_of(expr: str) -> Iterator[str]:
    plain, i = [], 0
    while i < len(expr):
        if expr[i] == '"':
            end = _string_end(expr, i)
            j = i + 1
            while j < end - 1:
                if expr[j] == "\\":
                    j += 2
                elif expr.startswith(("${", "%{"), j):
                    close = _interp_end(expr, j + 2)
                    yield from _code_of(expr[j + 2:close - 1])
                    j = close
                else:
                    j += 1
            i = end
        else:
            plain.append(expr[i])
            i += 1
    yield "".join(plain)


def var_refs(directory: Path) -> set[str]:
    found = set()
    for path in directory.glob("*.tf"):
        for chunk in code(parse(path)):
            found.update(re.findall(r"(?<![\w.])var\.([A-Za-z_][A-Za-z0-9_-]*)", chunk))
    return found


@dataclass(frozen=True)
class TemplateCall:
    template: str
    keys: frozenset[str]
    where: str


def templatefile_calls(directory: Path) -> list[TemplateCall]:
    """Every templatefile(path, {object}) call of the .tf files in `directory`, with the object's keys."""
    calls = []
    for path in sorted(directory.glob("*.tf")):
        for chunk in _expressions(parse(path)):
            toks = tokens(chunk)
            for i, tok in enumerate(toks):
                if tok == Token("ident", "templatefile") and i + 1 < len(toks) and toks[i + 1].text == "(":
                    calls.append(_call(toks, i + 2, f"{path.relative_to(TERRAFORM)}"))
    return calls


def _expressions(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            if key != "__is_block__":
                yield from _expressions(item)
    elif isinstance(value, list):
        for item in value:
            yield from _expressions(item)
    elif isinstance(value, str) and value.startswith("${") and value.endswith("}"):
        yield value[2:-1]


def _call(toks: list[Token], i: int, where: str) -> TemplateCall:
    first = toks[i]
    assert first.kind == "string" and toks[i + 1].text == ",", f"{where}: templatefile's path must be a string"
    name = re.fullmatch(r'"\$\{local\.templates\}/([^/"]+)\.tftpl"', first.text)
    assert name is not None, f"{where}: templatefile({first.text}): name templates as ${{local.templates}}/<x>.tftpl"
    assert toks[i + 2].text == "{", f"{where}: templatefile({first.text}, ...) must pass an object literal"
    keys, depth, j, expect_key = set(), 1, i + 3, True
    while depth:
        tok = toks[j]
        if depth == 1 and expect_key and tok.kind in ("ident", "string") and toks[j + 1].text in ("=", ":"):
            keys.add(tok.text.strip('"'))
            expect_key = False
        elif tok.text in ("{", "[", "("):
            depth += 1
        elif tok.text in ("}", "]", ")"):
            depth -= 1
        elif depth == 1 and tok.text == ",":
            expect_key = True
        j += 1
    return TemplateCall(name.group(1), frozenset(keys), where)


# --- the Terraform files --------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", TF_FILES, ids=[str(p.relative_to(TERRAFORM)) for p in TF_FILES])
def test_every_tf_file_parses(path: Path) -> None:
    assert isinstance(parse(path), dict)


def test_each_module_and_example_has_its_files() -> None:
    for name, directory in ROOTS.items():
        present = {p.name for p in directory.iterdir()}
        wanted = {"versions.tf", "variables.tf", "main.tf", "outputs.tf"}
        if name.startswith("examples/"):
            wanted |= {"README.md", "terraform.tfvars.example"}
        assert wanted <= present, f"{name}: missing {sorted(wanted - present)}"


@pytest.mark.parametrize("name", sorted(ROOTS))
def test_variables_are_declared_typed_described_and_used(name: str) -> None:
    directory = ROOTS[name]
    declared = {label: body for label, body, _ in blocks(directory, "variable")}
    used = var_refs(directory)
    problems = [f"var.{v} is used but not declared" for v in sorted(used - set(declared))]
    problems += [f"variable {v!r} is declared but never used" for v in sorted(set(declared) - used)]
    for label, body in declared.items():
        if "type" not in body:
            problems.append(f"variable {label!r} has no type")
        if not unquote(body.get("description", '""')).strip():
            problems.append(f"variable {label!r} has no description")
    assert not problems, f"{name}: " + "; ".join(problems)


@pytest.mark.parametrize("name", sorted(ROOTS))
def test_outputs_are_described(name: str) -> None:
    for label, body, _ in blocks(ROOTS[name], "output"):
        assert unquote(body.get("description", '""')).strip(), f"{name}: output {label!r} has no description"


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_module_calls_pass_declared_variables_and_every_required_one(name: str) -> None:
    meta = {"source", "for_each", "count", "providers", "depends_on", "version"}
    calls = list(blocks(EXAMPLES[name], "module"))
    assert calls, f"{name} calls no module"
    for label, body, _ in calls:
        source = unquote(body["source"])
        module = (EXAMPLES[name] / source).resolve()
        assert module in MODULES.values(), f"{name}: module {label} has source {source}"
        variables = {v: b for v, b, _ in blocks(module, "variable")}
        passed = {k for k in body if not k.startswith("__")} - meta
        assert passed <= set(variables), f"{name}: module {label} passes undeclared {sorted(passed - set(variables))}"
        required = {v for v, b in variables.items() if "default" not in b}
        assert required <= passed, f"{name}: module {label} misses required {sorted(required - passed)}"


def test_versions_pin_terraform_and_the_examples_providers() -> None:
    for name, directory in ROOTS.items():
        (terraform,) = parse(directory / "versions.tf")["terraform"]
        assert unquote(terraform["required_version"]).startswith(">= 1.5"), name
    providers = {name: set().union(*(set(p) for p in parse(EXAMPLES[name] / "versions.tf")["terraform"][0]
                                     ["required_providers"])) for name in EXAMPLES}
    providers = {name: {p for p in found if not p.startswith("__")} for name, found in providers.items()}
    assert providers["local"] == {"local"}, "the local example may only use hashicorp/local"
    assert providers["two-regions"] == {"equinix", "tls", "random"}


def test_the_modules_read_templates_from_terraform_templates() -> None:
    for name, directory in MODULES.items():
        (body,) = [b for b in parse(directory / "main.tf")["locals"] if "templates" in b]
        assert body["templates"] == '"${path.module}/../../templates"', name


# --- templatefile calls and their templates -------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(MODULES))
def test_templatefile_calls_pass_exactly_the_names_each_template_references(name: str) -> None:
    calls = templatefile_calls(MODULES[name])
    assert calls, name
    for call in calls:
        wanted = load(call.template).names
        assert call.keys == wanted, (f"{call.where}: templatefile({call.template}.tftpl): missing "
                                     f"{sorted(wanted - call.keys)}, extra {sorted(call.keys - wanted)}")


def test_every_template_is_used_by_a_module() -> None:
    used = {c.template for directory in MODULES.values() for c in templatefile_calls(directory)}
    assert used == set(tftemplate.template_names())


def test_examples_render_templates_only_through_the_modules() -> None:
    for name, directory in EXAMPLES.items():
        assert not templatefile_calls(directory), f"{name} renders templates itself"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_the_python_mirror_renders_what_the_module_renders(name: str, tmp_path: Path) -> None:
    hcl = {(c.template, c.keys) for c in templatefile_calls(MODULES[name])}
    mirrored: set[tuple[str, frozenset[str]]] = set()
    for deployment in (local_deployment(tmp_path / "a"), production_deployment(tmp_path / "b")):
        mirrored |= (deployment.global_ if name == "global" else deployment.regions[0]).calls
    assert mirrored == hcl, (f"only in the module: {sorted(hcl - mirrored)}; "
                             f"only in the mirror: {sorted(mirrored - hcl)}")


def test_local_example_port_defaults_are_the_mirrors() -> None:
    (body,) = [b for label, b, _ in blocks(EXAMPLES["local"], "variable") if label == "ports"]
    defaults = dict(re.findall(r"(\w+) = optional\(number, (\d+)\)", body["type"]))
    assert {k: int(v) for k, v in defaults.items()} == tftemplate.LOCAL_PORTS


def test_local_example_passes_what_the_mirror_passes() -> None:
    """The local example's per-region settings, as the mirror reproduces them (addresses, names, ports keys)."""
    text = (EXAMPLES["local"] / "main.tf").read_text()
    global_vars, regions = tftemplate.local_example_vars("/x")
    for member in global_vars["etcd_members"]:
        assert re.search(rf'name\s*=\s*"{member["name"]}",\s*address\s*=\s*"{member["address"]}"', text)
    for region in regions.values():
        for node in (region["zone_cp"], *region["ingresses"], *region["gateways"], *region["service_hosts"]):
            assert re.search(rf'name\s*=\s*"{node["name"]}",?\s*address\s*=\s*"{node["address"]}"', text), node["name"]
        for host in region["service_hosts"]:
            for instance in host["instances"]:
                assert re.search(rf'name\s*=\s*"{instance["name"]}"\s*service\s*=\s*"{instance["service"]}"', text)
        assert re.search(rf'name\s*=\s*"{region["gateway"]["name"]}"', text)


# --- rendered deployments, and what reads them ----------------------------------------------------------------

@dataclass
class Deployment:
    root: Path
    global_: Rendered
    regions: list[Rendered]

    @property
    def all(self) -> list[Rendered]:
        return [self.global_, *self.regions]

    def files(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for rendered in self.all:
            out.update(rendered.all_files())
        return out

    def write(self) -> None:
        """Write every file, and an empty token wherever a token is delivered out of band."""
        secrets = [p for r in self.all for f in r.secret_files.values() for p in f]
        tftemplate.write_files(self.files(), secrets)
        for path in self.files():
            if path.endswith(".yaml") and "/etc/meshcast/" in path:
                for token in re.findall(r'token-file: "([^"]+)"', Path(path).read_text()):
                    Path(token).parent.mkdir(parents=True, exist_ok=True)
                    Path(token).write_text("token\n")


def local_deployment(root: Path) -> Deployment:
    rendered = render_local_example(root, meshcast_venv=sys.prefix)
    return Deployment(root, rendered["global"], [rendered["eu"], rendered["us"]])


@cache
def _tls(directory: str) -> Path:
    return tftemplate.make_local_tls(Path(directory), members=[
        ("etcd-am-1", "147.75.80.11"), ("etcd-da-1", "147.75.90.21"), ("etcd-ny-1", "147.75.70.31")],
        zone_cps=[("eu-west", "147.75.80.41"), ("us-east", "147.75.90.51")])


def production_deployment(root: Path, tls_dir: Path | None = None) -> Deployment:
    """Two regions as on bare metal, TLS everywhere, with the module defaults for ports; files under `root`."""
    tls = tls_dir or _tls(str(root.parent / "tls"))

    def pem(name: str) -> str:
        return (tls / name).read_text()

    members = [{"name": n, "address": a} for n, a in
               (("etcd-am-1", "147.75.80.11"), ("etcd-da-1", "147.75.90.21"), ("etcd-ny-1", "147.75.70.31"))]
    common = {"meshcast_package": "meshcast==0.1.0", "meshcast_venv": sys.prefix, "root_dir": str(root)}
    zones = {"eu-west": "Zs8v4u1Jm0pQ-eu-west-2c9", "us-east": "p1Lr7Kx3Vd8-us-east-77aQ"}
    global_vars = {
        **common, "global_cp": {"name": "global-cp", "address": "147.75.80.12"}, "etcd_members": members,
        "etcd_timers": {"heartbeat_ms": 250, "election_ms": 2500}, "zone_etcd_passwords": zones,
        "etcd_tls": {"ca_cert": pem("ca.crt"), "member_certs": {m["name"]: pem(f"{m['name']}.crt") for m in members},
                     "client_cert": pem("global-cp-etcd-client.crt")},
        "etcd_tls_keys": {"members": {m["name"]: pem(f"{m['name']}.key") for m in members},
                          "client": pem("global-cp-etcd-client.key")},
        "etcd_root_password": "Qm9vdHN0cmFwLXJvb3QtcGFzc3dvcmQ",
    }
    endpoints = render_global(global_vars).extra["etcd_endpoints"]
    regions = []
    for zone, net, asn in (("eu-west", 80, 65101), ("us-east", 90, 65102)):
        def address(host: int, net: int = net) -> str:
            return f"147.75.{net}.{host}"

        regions.append(render_region({
            **common, "region": zone, "zone_cp": {"name": f"{zone}-cp", "address": address(41 if net == 80 else 51)},
            "zone_etcd_root_password": f"zone-etcd-root-{zone}-9Jw2",
            "global_etcd_endpoints": endpoints, "global_etcd_password": zones[zone],
            "global_etcd_tls": {"ca_cert": pem("ca.crt"), "client_cert": pem("global-cp-etcd-client.crt")},
            "global_etcd_client_key": pem("global-cp-etcd-client.key"),
            "cp_tls": {"ca_cert": pem("ca.crt"), "cert": pem(f"{zone}-cp.crt")}, "cp_tls_key": pem(f"{zone}-cp.key"),
            "ingresses": [{"name": f"{zone}-ingress-1", "address": address(61)}],
            "gateways": [{"name": f"{zone}-gw-{n}", "address": address(70 + n), "bgp_local_address": f"10.{net}.0.{n}"}
                         for n in (1, 2)],
            "gateway": {"name": "edge", "routes": [
                {"hosts": ["shop.example.com"], "path_prefix": "/api", "to": "backend"},
                {"hosts": ["shop.example.com", "*.shop.example.com"], "to": "web"}],
                "certificates": [{"name": "shop", "hosts": ["shop.example.com", "*.shop.example.com"],
                                  "cert": pem(f"{zone}-cp.crt")}]},
            "gateway_tls_keys": {"shop": pem(f"{zone}-cp.key")},
            "anycast_addresses": ["198.51.100.10"],
            "bgp": {"local_asn": asn, "prefixes": ["198.51.100.10/32"], "med": 100,
                    "communities": [f"{asn}:100", "no-export"],
                    "peers": [{"address": "169.254.255.1", "asn": 65530, "description": "metro router 1"},
                              {"address": "169.254.255.2", "asn": 65530, "description": "metro router 2"}]},
            "service_hosts": [{"name": f"{zone}-apps-1", "address": address(81), "instances": [
                {"name": f"{zone}-web-1", "service": "web", "port": 10080, "app_port": 8080, "admin_port": 9910,
                 "tags": {"version": "v2", "tier": "front"},
                 "outbound": [{"port": 20001, "service": "backend"}]},
                {"name": f"{zone}-backend-1", "service": "backend", "port": 10081, "app_port": 8081,
                 "admin_port": 9911, "protocol": "grpc"}]}],
            "extra_files": {f"{zone}-gw-1": {"/etc/systemd/system/provider-routes.service":
                                             "[Unit]\nDescription=x\n[Service]\nType=oneshot\nExecStart=/bin/true\n"}},
            "extra_units": {f"{zone}-gw-1": ["provider-routes.service"]},
        }))
    resources = [regions[0].extra["mesh_gateway"]]
    return Deployment(root, render_global({**global_vars, "resources": resources}), regions)


@pytest.fixture(params=["local", "production"])
def deployment(request: pytest.FixtureRequest, tmp_path: Path) -> Deployment:
    made = (local_deployment(tmp_path / "nodes") if request.param == "local"
            else production_deployment(tmp_path / "nodes"))
    made.write()
    return made


COMMANDS = {"zone-cp.yaml": ("zone-cp", "run"), "global-cp.yaml": ("global-cp", "run"),
            "ingress.yaml": ("ingress", "run"), "gateway.yaml": ("gateway", "run")}


def command(group: str, name: str) -> click.Command:
    sub = cli.commands[group]
    assert isinstance(sub, click.Group)
    return sub.commands[name]


def command_context(group: str, name: str) -> click.Context:
    """The click context `meshcast <group> <name>` runs in, as load_config_file receives it."""
    root = click.Context(cli, info_name="meshcast")
    parent = click.Context(cli.commands[group], info_name=group, parent=root)
    return click.Context(command(group, name), info_name=name, parent=parent)


def config_files(deployment: Deployment) -> list[tuple[str, tuple[str, str]]]:
    out = []
    for path in deployment.files():
        name = Path(path).name
        if name in COMMANDS and "/etc/meshcast/" in path:
            out.append((path, COMMANDS[name]))
        elif "/etc/meshcast/dataplanes/" in path and not name.endswith(".dataplane.yaml"):
            out.append((path, ("dataplane", "run")))
    return out


def test_config_files_are_accepted_by_their_commands(deployment: Deployment) -> None:
    found = config_files(deployment)
    assert {c for _, c in found} == {*COMMANDS.values(), ("dataplane", "run")}
    for path, (group, name) in found:
        defaults = load_config_file(command_context(group, name), Path(path))
        assert defaults, path
        # The whole command line as the unit runs it: required options satisfied, every value converted.
        ctx = command(group, name).make_context(name, ["--config", path], parent=command_context(group, name).parent)
        assert ctx.params, path


def test_config_files_say_what_the_units_and_the_deployment_need(deployment: Deployment) -> None:
    for path, (group, _) in config_files(deployment):
        config = yaml.safe_load(Path(path).read_text())
        for key in ("state-dir", "token-file", "dataplane-file", "ca-file", "tls-cert", "tls-key", "etcd-ca-file",
                    "etcd-cert-file", "etcd-key-file", "global-etcd-ca-file", "global-etcd-cert-file",
                    "global-etcd-key-file"):
            if key in config:
                assert config[key].startswith(str(deployment.root)), (path, key)
        # Every https peer comes with the CA that verifies it (and etcd's with a client certificate): no process
        # relies on the system's trust store or on SSL_CERT_FILE.
        if config.get("cp", "").startswith("https://"):
            assert "ca-file" in config, path
        for prefix, endpoints in (("etcd-", config.get("etcd-endpoints", "")),
                                  ("global-etcd-", config.get("global-etcd", ""))):
            secure = "https://" in endpoints
            assert all(u.startswith("https://" if secure else "http://") for u in endpoints.split(",") if u), path
            for key in ("ca-file", "cert-file", "key-file"):
                assert (prefix + key in config) == secure, (path, prefix + key)
        if group == "zone-cp":
            assert config["global-etcd-user"] == f"meshcast-zone-{config['zone']}"
            assert "etcd-password" not in config and "global-etcd-password" not in config  # in the env file
        if group in ("dataplane", "gateway", "ingress"):
            assert config["admin-addr"].startswith("127.0.0.1:")


def test_a_config_file_with_an_unknown_option_is_refused(deployment: Deployment) -> None:
    path = next(Path(p) for p, c in config_files(deployment) if c == ("zone-cp", "run"))
    path.write_text(path.read_text() + "etcd-pasword: oops\n")
    with pytest.raises(click.BadParameter, match="'etcd-pasword' is not an option"):
        load_config_file(command_context("zone-cp", "run"), path)


def test_dataplanes_and_meshgateways_are_valid_resources(deployment: Deployment) -> None:
    from meshcast.cli.dataplane_file import _read
    from meshcast.resources.codec import load_documents

    files = deployment.files()
    dataplanes = [p for p in files if p.endswith(".dataplane.yaml")]
    assert len(dataplanes) >= 4
    for path in dataplanes:
        (resource,) = load_documents(files[path], source=path)
        assert resource.type == "Dataplane"
        if resource.spec.gateway is None:  # type: ignore[attr-defined]
            assert resource.name == Path(path).name.removesuffix(".dataplane.yaml")
        assert _read(Path(path))["type"] == "Dataplane"  # what `meshcast dataplane run` reads
    gateways = [p for p in files if p.endswith("/resources/meshgateway.yaml")]
    applied = [p for p in files if re.search(r"/resources/\d\d\.yaml$", p)]
    assert gateways and applied
    for path in gateways + applied:
        (resource,) = load_documents(files[path], source=path)
        assert resource.type == "MeshGateway"
    for rendered in deployment.regions:
        for node, node_files in rendered.files.items():
            for path, text in node_files.items():
                if path.endswith(".dataplane.yaml") and "gateway:" in text:
                    (resource,) = load_documents(text)
                    assert resource.spec.gateway == yaml.safe_load(rendered.extra["mesh_gateway"])["name"], node  # type: ignore[attr-defined]


def test_a_dataplane_with_a_bad_port_is_refused(deployment: Deployment) -> None:
    from meshcast.errors import ValidationError
    from meshcast.resources.codec import load_documents

    path = next(p for p in deployment.files() if p.endswith(".dataplane.yaml") and "appPort" in Path(p).read_text())
    text = re.sub(r"- port: \d+", "- port: 70000", Path(path).read_text())
    with pytest.raises(ValidationError, match=r"spec.inbound\[0\].port"):
        load_documents(text)


def test_bgp_region_files_are_valid_and_probe_their_gateway(tmp_path: Path) -> None:
    from bgp.render import render_exabgp_conf
    from bgp.settings import load_region_file

    deployment = production_deployment(tmp_path / "nodes")  # the local example runs no BGP speaker
    deployment.write()
    checked = 0
    for rendered in deployment.regions:
        for gateway, text in rendered.extra["bgp_region_files"].items():
            (path,) = [p for p, t in rendered.files[gateway].items() if "/etc/meshcast/bgp/" in p]
            assert Path(path).read_text() == text
            settings = load_region_file(Path(path))
            gateway_config = yaml.safe_load(next(t for p, t in rendered.files[gateway].items()
                                                 if p.endswith("/etc/meshcast/gateway.yaml")))
            assert settings.readiness.url == f"http://{gateway_config['admin-addr']}/ready"
            assert str(settings.state_dir).startswith(str(deployment.root))
            assert "neighbor" in render_exabgp_conf(settings)
            checked += 1
    assert checked == 4  # two gateways in each region


# The keys of etcd 3.4's configuration file (embed.Config's yaml tags, as etcd.conf.yml.sample lists them).
ETCD_KEYS = {
    "name", "data-dir", "wal-dir", "snapshot-count", "heartbeat-interval", "election-timeout", "quota-backend-bytes",
    "listen-peer-urls", "listen-client-urls", "max-snapshots", "max-wals", "cors", "initial-advertise-peer-urls",
    "advertise-client-urls", "discovery", "discovery-fallback", "discovery-proxy", "discovery-srv",
    "initial-cluster", "initial-cluster-token", "initial-cluster-state", "strict-reconfig-check", "enable-v2",
    "enable-pprof", "proxy", "client-transport-security", "peer-transport-security", "debug", "logger",
    "log-outputs", "log-level", "force-new-cluster", "auto-compaction-mode", "auto-compaction-retention",
    "listen-metrics-urls", "metrics", "cipher-suites", "max-txn-ops", "max-request-bytes", "auth-token",
    "auth-token-ttl",
}
ETCD_TLS_KEYS = {"cert-file", "key-file", "client-cert-auth", "trusted-ca-file", "auto-tls", "crl-file"}


def test_etcd_configurations_use_etcd_34_keys_and_existing_files(deployment: Deployment) -> None:
    configs = [p for p in deployment.files() if p.endswith("/etc/meshcast/etcd.yaml")]
    assert len(configs) == 5  # three global members, one per zone
    for path in configs:
        config = yaml.safe_load(Path(path).read_text())
        assert set(config) <= ETCD_KEYS, (path, set(config) - ETCD_KEYS)
        assert config["initial-cluster-state"] == "new" and config["logger"] == "zap"
        assert config["data-dir"].startswith(str(deployment.root))
        members = dict(m.split("=", 1) for m in config["initial-cluster"].split(","))
        assert members[config["name"]] == config["initial-advertise-peer-urls"]
        for section in ("client-transport-security", "peer-transport-security"):
            if section in config:
                assert set(config[section]) <= ETCD_TLS_KEYS and config[section]["client-cert-auth"] is True
                for key in ("cert-file", "key-file", "trusted-ca-file"):
                    assert Path(config[section][key]).is_file(), (path, section, key)
                assert config["listen-client-urls"].startswith("https://")


def test_environment_files_hold_the_passwords_as_systemd_reads_them(deployment: Deployment) -> None:
    envs = {p: c for r in deployment.all for f in r.secret_files.values() for p, c in f.items() if p.endswith(".env")}
    assert len(envs) == 3
    for path, text in envs.items():
        values = systemd_environment(text)
        assert values, path
        assert all(re.fullmatch(r"[A-Za-z0-9._~+/=-]{16,72}", v) for v in values.values()), path
        expected = {"MESHCAST_ETCD_PASSWORD"} if "global-cp" in path else {
            "MESHCAST_ETCD_PASSWORD", "MESHCAST_GLOBAL_ETCD_PASSWORD"}
        assert set(values) == expected, path


def systemd_environment(text: str) -> dict[str, str]:
    """KEY=value lines as systemd's EnvironmentFile= reads them (comments, double quotes)."""
    out = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith(("#", ";")):
            continue
        key, _, value = line.partition("=")
        if value.startswith('"') and value.endswith('"'):
            assert "\\" not in value, line
            value = value[1:-1]
        out[key.strip()] = value
    return out


def test_cloud_init_writes_every_file_and_enables_every_unit(deployment: Deployment) -> None:
    for rendered in deployment.all:
        for node, text in rendered.user_data.items():
            assert text.startswith("#cloud-config\n"), node
            doc = yaml.safe_load(text)
            written = {f["path"]: f for f in doc["write_files"]}
            expected = {**rendered.files[node], **rendered.secret_files[node]}
            assert {p: f["content"] for p, f in written.items()} == expected, node
            assert all(f["defer"] is True for f in written.values())
            for path in rendered.secret_files[node]:
                assert written[path]["permissions"] in ("0600", "0640"), path
                assert written[path]["owner"] in ("root:root", "root:etcd", "root:meshcast"), path
            assert doc["hostname"] == node
            assert doc["runcmd"][-1] == ["systemctl", "enable", "--now", *rendered.units[node]]
            assert doc["runcmd"][-2] == ["systemctl", "daemon-reload"]
            assert "python3-venv" in doc["packages"] or rendered.units[node] == ["meshcast-etcd.service"]
            units = {Path(p).name for p in rendered.files[node] if "/etc/systemd/system/" in p}
            for unit in rendered.units[node]:
                assert unit in units or re.sub(r"@.+\.", "@.", unit) in units, (node, unit)


def test_units_reference_files_of_their_node(deployment: Deployment) -> None:
    """Every configuration, script or certificate a unit names is a file of the same node (tokens arrive out of
    band, state directories are made by systemd)."""
    files = deployment.files()
    for path, text in files.items():
        if "/etc/systemd/system/meshcast" not in path:
            continue
        node_root = str(deployment.root / Path(path).relative_to(deployment.root).parts[0])
        for line in text.splitlines():
            if line.startswith("#"):
                continue
            for ref in re.split(r"[\s=]+", line):
                if ref.startswith(str(deployment.root)) and "%i" not in ref and "/tokens/" not in ref \
                        and "/var/lib/" not in ref:
                    assert ref.startswith(node_root + "/") and ref in files, (path, ref)


# --- systemd ------------------------------------------------------------------------------------------------------

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
def test_units_pass_systemd_analyze_verify(deployment: Deployment, tmp_path: Path) -> None:
    """Every unit, rendered with executables that exist here (this virtualenv's meshcast and python, Debian's
    etcd and ip), in a unit directory of its own: `systemd-analyze verify` must print nothing about them."""
    assert SYSTEMD_ANALYZE is not None
    for binary in ("/usr/bin/etcd", "/usr/sbin/ip"):
        if not os.access(binary, os.X_OK):
            pytest.fail(f"{binary} is missing: install etcd-server and iproute2 (make deps)")
    units: dict[str, str] = {}
    instances = []
    for rendered in deployment.all:
        for node, node_units in rendered.units.items():
            instances += [u for u in node_units if "@" in u]
            for path, text in rendered.files[node].items():
                if "/etc/systemd/system/" in path:
                    units.setdefault(Path(path).name, text)
    unit_dir = tmp_path / "units"
    unit_dir.mkdir()
    for name, text in units.items():
        (unit_dir / name).write_text(text)
    names = sorted(n for n in units if "@." not in n) + sorted(set(instances))
    result = subprocess.run([SYSTEMD_ANALYZE, "verify", "--man=no", *names], capture_output=True, text=True,
                            env={**os.environ, "SYSTEMD_UNIT_PATH": f"{unit_dir}:", "SYSTEMD_LOG_COLOR": "0"},
                            cwd=unit_dir, timeout=120, check=False)
    ours = [line for line in result.stderr.splitlines()
            if str(unit_dir) in line or any(n.split("@")[0] in line for n in names)]
    assert result.returncode == 0 and not ours, result.stderr


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    assert SYSTEMD_ANALYZE is not None
    (tmp_path / "broken.service").write_text("[Service]\nExecStart=/nonexistent/meshcast run\nKillSignal=SIGNOPE\n")
    result = subprocess.run([SYSTEMD_ANALYZE, "verify", "--man=no", "broken.service"], capture_output=True, text=True,
                            env={**os.environ, "SYSTEMD_UNIT_PATH": f"{tmp_path}:"}, cwd=tmp_path, timeout=60,
                            check=False)
    assert result.returncode != 0 and "SIGNOPE" in result.stderr


# --- unit hardening and drain timings -------------------------------------------------------------------------

def unit_settings(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def test_units_are_hardened_and_stop_after_their_drain(tmp_path: Path) -> None:
    made = production_deployment(tmp_path / "nodes")
    units = {Path(p).name: unit_settings(t) for r in made.all for f in r.files.values() for p, t in f.items()
             if "/etc/systemd/system/meshcast" in p}
    assert len(units) == 10
    for name, s in units.items():
        for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "ProtectKernelTunables", "RestrictNamespaces",
                    "LockPersonality", "RestrictSUIDSGID"):
            assert s.get(key) == ["yes"], (name, key)
        assert s["ProtectSystem"] == ["strict"], name
        assert "RestrictAddressFamilies" in s and "SystemCallFilter" in s, name
        if name != "meshcast-anycast.service":
            assert s.get("User") in (["meshcast"], ["etcd"]), name
            assert s.get("Restart") == ["on-failure"], name
    assert units["meshcast-gateway.service"]["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"]
    assert units["meshcast-gateway.service"]["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]
    assert units["meshcast-anycast.service"]["CapabilityBoundingSet"] == ["CAP_NET_ADMIN"]
    for name in set(units) - {"meshcast-gateway.service", "meshcast-anycast.service"}:
        assert units[name]["CapabilityBoundingSet"] == [""], name
        assert "AmbientCapabilities" not in units[name], name
    gateway = yaml.safe_load(next(t for f in made.regions[0].files.values() for p, t in f.items()
                                  if p.endswith("/gateway.yaml")))
    stop = int(units["meshcast-gateway.service"]["TimeoutStopSec"][0])
    assert stop >= gateway["withdraw-delay"] + gateway["drain-timeout"] + 10
    assert units["meshcast-gateway.service"]["KillMode"] == ["mixed"]
    sidecar = yaml.safe_load(next(t for f in made.regions[0].files.values() for p, t in f.items()
                                  if "/dataplanes/" in p and not p.endswith(".dataplane.yaml")))
    assert int(units["meshcast-sidecar@.service"]["TimeoutStopSec"][0]) >= sidecar["drain-timeout"] + 10
    zone_cp = units["meshcast-zone-cp.service"]
    for after in ("meshcast-etcd.service", "meshcast-etcd-bootstrap.service"):
        assert after in zone_cp["After"][0] and after in zone_cp["Wants"][0]


# --- the renderer refuses what it does not support ------------------------------------------------------------

@pytest.mark.parametrize("text", [
    "${a + 1}", "${upper(name)}", "${a ? b : c}", "${list[0]}", "${[for x in xs : x]}", "${a.b[\"c\"].d(1)}",
    "${\"a ${b}\"}", "${join(sep, xs)}", "${jsonencode(a, b)}", "%{ for x in xs }", "%{ if a }", "%{ endfor }",
    "%{ while a }x%{ endwhile }", "%{ for x, y, z in xs }%{ endfor }", "%{ if a == b }x%{ endif }", "${",
    "${a}%{ else }", "${ a ", "a\rb",
])
def test_the_renderer_refuses_syntax_outside_the_subset(text: str) -> None:
    with pytest.raises(TemplateError):
        tftemplate.Template(text, "t").render({"a": True, "b": "x", "c": "y", "xs": [], "name": "n", "list": [1],
                                                "sep": ",", "y": 1})
