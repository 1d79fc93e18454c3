"""`meshcast`: operate a mesh (apply, get, delete, inspect, generate tokens) and run its components.

User errors print one line and exit non-zero; no tracebacks. Components are imported only by the subcommand that
runs them, so `meshcast get` never loads the data plane or the etcd client, and the HTTP client (httpx) and YAML
only by the commands that use them, so a sidecar (`meshcast dataplane run`) never holds them.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click

import meshcast
from meshcast.cli.configfile import config_option
from meshcast.errors import MeshcastError, api_error_message

DEFAULT_CP = "http://127.0.0.1:5681"
F = TypeVar("F", bound=Callable[..., Any])


def etcd_tls_options(prefix: str, what: str) -> Callable[[F], F]:
    """--PREFIX-ca-file, --PREFIX-cert-file and --PREFIX-key-file: TLS to an etcd with https:// endpoints."""
    file = click.Path(exists=True, dir_okay=False, path_type=Path)

    def decorate(command: F) -> F:
        for option, text in reversed((
            ("ca-file", f"CA that signed {what}'s certificates (with https:// endpoints)."),
            ("cert-file", f"Client certificate for {what} (when it asks for one: --client-cert-auth)."),
            ("key-file", "Its private key."),
        )):
            command = click.option(f"--{prefix}-{option}", type=file, default=None, help=text)(command)
        return command

    return decorate


class Context:
    def __init__(self, cp: str, ca_file: str | None) -> None:
        self.cp = cp.rstrip("/")
        self.verify: Any = True
        if ca_file:
            import ssl

            self.verify = ssl.create_default_context(cafile=ca_file)

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        import httpx

        with _reaching(self.cp):
            response = httpx.request(method, self.cp + path, timeout=30, verify=self.verify, **kwargs)
        if response.status_code >= 400:
            raise click.ClickException(f"{api_error_message(response)} (HTTP {response.status_code})")
        return response.json() if response.content else None


@contextmanager
def _reaching(url: str) -> Iterator[None]:
    import httpx

    try:
        yield
    except httpx.ConnectError as exc:
        if "CERTIFICATE_VERIFY_FAILED" in str(exc):
            raise click.ClickException(
                f"the control plane at {url} presented a certificate this client does not trust "
                "(pass its CA with --ca-file)") from None
        raise click.ClickException(f"cannot reach the control plane at {url} (is it running? see --cp)") from None
    except httpx.TimeoutException:
        raise click.ClickException(f"the control plane at {url} did not answer in time") from None
    except httpx.HTTPError as exc:
        raise click.ClickException(f"talking to the control plane at {url}: {exc}") from None


pass_ctx = click.make_pass_decorator(Context)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--cp", envvar="MESHCAST_CP", default=DEFAULT_CP, show_default=True,
              help="URL of the control plane API (or MESHCAST_CP).")
@click.option("--ca-file", envvar="MESHCAST_CA_FILE", default=None, type=click.Path(exists=True, dir_okay=False),
              help="CA certificate(s) to verify an https control plane (or MESHCAST_CA_FILE).")
@click.pass_context
def cli(ctx: click.Context, cp: str, ca_file: str | None) -> None:
    """Meshcast: a multi-region service mesh."""
    ctx.obj = Context(cp, ca_file)


# --- resources ------------------------------------------------------------------------------------------------


@cli.command()
@click.option("-f", "--file", "files", multiple=True, required=True, type=click.File("r"),
              help="YAML or JSON file with one or more resources ('-' for standard input).")
@click.option("--dry-run", is_flag=True, help="Validate only; store nothing.")
@pass_ctx
def apply(ctx: Context, files: tuple[Any, ...], dry_run: bool) -> None:
    """Create or update resources. Every document is validated before any is stored."""
    from meshcast.resources.codec import decode_text, load_documents

    docs: list[Any] = []
    for handle in files:
        text = handle.read()
        source = "stdin" if handle.name == "<stdin>" else handle.name
        try:
            load_documents(text, source=source)  # fail fast, naming the field path, before sending anything
        except MeshcastError as exc:
            raise click.ClickException(str(exc)) from None
        docs += decode_text(text, source=source)
    if dry_run:
        click.echo(f"{len(docs)} resource(s) valid")
        return
    for item in ctx.request("POST", "/v1/apply", json=docs):
        resource = item["resource"]
        where = f"{resource['mesh']}/" if resource.get("mesh") else ""
        click.echo(f"{resource['type']} {where}{resource['name']} {item['result']}")


def _type_or_fail(name: str) -> Any:
    from meshcast.resources import lookup_type

    try:
        return lookup_type(name)
    except MeshcastError as exc:
        raise click.ClickException(str(exc)) from None


OUTPUT = click.option("-o", "--output", type=click.Choice(["table", "yaml", "json"]), default="table",
                      show_default=True, help="Output format.")


@cli.command()
@click.argument("type_name", metavar="TYPE")
@click.argument("name", required=False)
@click.option("-m", "--mesh", default=None, help="Mesh of the resources (default: all meshes; 'default' for NAME).")
@OUTPUT
@pass_ctx
def get(ctx: Context, type_name: str, name: str | None, mesh: str | None, output: str) -> None:
    """Show resources of TYPE (e.g. meshes, dataplanes, zones), or the one named NAME."""
    from meshcast.resources import Scope

    rtype = _type_or_fail(type_name)
    if rtype.name == "Zone" and name is None and output == "table":
        _print_zones(ctx.request("GET", "/v1/inspect/zones"))
        return
    if name is None:
        query = f"?mesh={mesh}" if mesh else ""
        items = ctx.request("GET", f"/v1/{rtype.plural}{query}")["items"]
    elif rtype.scope is Scope.MESH:
        items = [ctx.request("GET", f"/v1/meshes/{mesh or 'default'}/{rtype.plural}/{name}")]
    else:
        items = [ctx.request("GET", f"/v1/{rtype.plural}/{name}")]
    if output == "json":
        click.echo(json.dumps(items[0] if name else {"items": items}, indent=2))
    elif output == "yaml":
        import yaml

        click.echo(yaml.safe_dump_all(items, sort_keys=False), nl=False)
    else:
        _print_table(_rows(rtype.name, items))


def _rows(type_name: str, items: list[dict[str, Any]]) -> list[list[str]]:
    from meshcast.resources import lookup_type

    mesh_scoped = lookup_type(type_name).scope.value == "mesh"
    header = (["MESH"] if mesh_scoped else []) + ["NAME"]
    if type_name == "Mesh":
        header += ["MTLS", "CERT TTL"]
    elif type_name == "Dataplane":
        header += ["ADDRESS", "SERVICES"]
    header += ["VERSION", "MODIFIED"]
    rows = [header]
    for item in items:
        spec = item.get("spec", {})
        row = ([item.get("mesh", "")] if mesh_scoped else []) + [item["name"]]
        if type_name == "Mesh":
            mtls = spec.get("mtls") or {}
            row += ["builtin" if mtls and mtls.get("enabled", True) else "off", mtls.get("certTTL", "-")]
        elif type_name == "Dataplane":
            row += [spec.get("address", ""), ",".join(sorted({i["service"] for i in spec.get("inbound", [])}))]
        row += [str(item.get("version", "")), str(item.get("modificationTime", ""))]
        rows.append(row)
    return rows


def _print_table(rows: list[list[str]]) -> None:
    if len(rows) == 1:
        click.echo("No resources found.")
        return
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


@cli.command()
@click.argument("type_name", metavar="TYPE")
@click.argument("name")
@click.option("-m", "--mesh", default="default", show_default=True, help="Mesh of the resource.")
@pass_ctx
def delete(ctx: Context, type_name: str, name: str, mesh: str) -> None:
    """Delete the resource NAME of TYPE."""
    from meshcast.resources import Scope

    rtype = _type_or_fail(type_name)
    if rtype.scope is Scope.MESH:
        ctx.request("DELETE", f"/v1/meshes/{mesh}/{rtype.plural}/{name}")
        click.echo(f"{rtype.name} {mesh}/{name} deleted")
    else:
        ctx.request("DELETE", f"/v1/{rtype.plural}/{name}")
        click.echo(f"{rtype.name} {name} deleted")


@cli.group()
def inspect() -> None:
    """Look at the live state of the mesh."""


@inspect.command("dataplanes")
@click.option("-m", "--mesh", default=None, help="Only this mesh.")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
@pass_ctx
def inspect_dataplanes(ctx: Context, mesh: str | None, output: str) -> None:
    """Dataplanes with their health, config version and certificate expiry."""
    items = ctx.request("GET", "/v1/inspect/dataplanes" + (f"?mesh={mesh}" if mesh else ""))
    if output == "json":
        click.echo(json.dumps(items, indent=2))
        return
    rows = [["MESH", "NAME", "STATUS", "ADDRESS", "SERVICES", "CONNECTED", "CONFIG (SENT/ACKED)", "CERT EXPIRY"]]
    for dp in items:
        rows.append([
            dp["mesh"], dp["name"], dp["status"], dp["address"], ",".join(dp["services"]),
            "yes" if dp["connected"] else "no", f"{dp['sentVersion'] or '-'}/{dp['ackedVersion'] or '-'}",
            dp["certificateExpiry"] or "-",
        ])
    _print_table(rows)


@inspect.command("dataplane")
@click.argument("name")
@click.option("-m", "--mesh", default="default", show_default=True)
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
@pass_ctx
def inspect_dataplane(ctx: Context, name: str, mesh: str, output: str) -> None:
    """The policies in force at one dataplane: for each outbound service, inbound service (by caller) and the
    proxy as a whole, the merged settings of each policy kind and the policies they came from."""
    item = ctx.request("GET", f"/v1/inspect/dataplanes/{mesh}/{name}")
    if output == "json":
        click.echo(json.dumps(item, indent=2))
        return
    click.echo(f"Dataplane {item['mesh']}/{item['name']} ({item['status']}, services {','.join(item['services'])}, "
               f"config {item['ackedVersion'] or '-'})")
    if not item["policies"]:
        click.echo("No policy applies.")
        return
    rows = [["WHERE", "KIND", "SETTINGS", "FROM (least specific first)"]]
    for row in item["policies"]:
        rows.append([row["where"], row["kind"], json.dumps(row["settings"], separators=(",", ":")),
                     ", ".join(row["from"])])
    _print_table(rows)


def _print_zones(zones: list[dict[str, Any]]) -> None:
    rows = [["NAME", "STATUS", "API", "INGRESS", "VERSION", "SERVICES"]]
    for zone in zones:
        rows.append([zone["name"], zone["status"] + (" (stale)" if zone.get("stale") else ""),
                     zone.get("apiAddress") or "-", zone.get("ingressAddress") or "-", zone.get("version") or "-",
                     str(zone.get("services", 0))])
    _print_table(rows)


@inspect.command("services")
@click.option("-m", "--mesh", default=None, help="Only this mesh.")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
@pass_ctx
def inspect_services(ctx: Context, mesh: str | None, output: str) -> None:
    """Services and the zones where they are available (healthy endpoints per zone)."""
    items = [s for s in ctx.request("GET", "/v1/inspect/services") if mesh is None or s["mesh"] == mesh]
    if output == "json":
        click.echo(json.dumps(items, indent=2))
        return
    rows = [["MESH", "SERVICE", "PROTOCOL", "ZONES (HEALTHY ENDPOINTS)"]]
    for item in items:
        protocols = sorted({z["protocol"] for z in item["zones"]})
        rows.append([item["mesh"], item["service"], ",".join(protocols),
                     ", ".join(f"{z['zone']} ({z['healthy']})" for z in item["zones"])])
    _print_table(rows)


@cli.group()
def generate() -> None:
    """Generate credentials."""


@generate.command("dataplane-token")
@click.option("-m", "--mesh", default="default", show_default=True)
@click.option("-s", "--service", "services", multiple=True, required=True,
              help="Service the dataplane may serve (repeat for several).")
@click.option("--valid-for", default="24h", show_default=True, help="Lifetime, e.g. 30m, 24h, 720h.")
@pass_ctx
def dataplane_token(ctx: Context, mesh: str, services: tuple[str, ...], valid_for: str) -> None:
    """Print a token a dataplane registers with. Only loopback callers get one unless the CP allows remote."""
    body = {"mesh": mesh, "services": list(services), "validFor": valid_for}
    click.echo(ctx.request("POST", "/v1/tokens/dataplane", json=body)["token"])


@generate.command("ingress-token")
@click.option("--valid-for", default="720h", show_default=True, help="Lifetime, e.g. 24h, 720h.")
@pass_ctx
def ingress_token(ctx: Context, valid_for: str) -> None:
    """Print a token for this zone's ingress (ask the zone CP). Loopback callers only unless the CP allows remote."""
    click.echo(ctx.request("POST", "/v1/tokens/ingress", json={"validFor": valid_for})["token"])


@generate.command("zone-token")
@click.option("--zone", required=True, help="The zone the token is for.")
@click.option("--valid-for", default="720h", show_default=True, help="Lifetime, e.g. 24h, 720h.")
@pass_ctx
def zone_token(ctx: Context, zone: str, valid_for: str) -> None:
    """Print a token a zone CP joins the global CP with (ask the global CP)."""
    click.echo(ctx.request("POST", "/v1/tokens/zone", json={"zone": zone, "validFor": valid_for})["token"])


@cli.command()
@pass_ctx
def version(ctx: Context) -> None:
    """Print the client's version and, if reachable, the control plane's."""
    click.echo(f"client: meshcast {meshcast.__version__}")
    try:
        info = ctx.request("GET", "/")
        zone = f" (zone {info['zone']})" if info.get("zone") else ""
        click.echo(f"control plane: {info['component']} {info['version']} at {ctx.cp}{zone}")
    except click.ClickException as exc:
        click.echo(f"control plane: unreachable ({exc.message})")


@cli.command()
@click.option("--once", is_flag=True, help="Exit after the tour instead of running until Ctrl-C.")
def demo(once: bool) -> None:
    """Run a small mesh on this machine (loopback only) and show it."""
    from meshcast.demo import run_demo

    run_demo(once)


@cli.group(hidden=True)
def docs() -> None:
    """Documentation generated from the code."""


@docs.command("reference")
def docs_reference() -> None:
    """Print the resource and policy reference (Markdown): `meshcast docs reference > docs/reference.md`."""
    from meshcast.resources.reference import render_reference

    click.echo(render_reference(), nl=False)


# --- components -------------------------------------------------------------------------------------------------


@cli.group("zone-cp")
def zone_cp() -> None:
    """The zone control plane."""


@zone_cp.command("run")
@config_option
@click.option("--store", "store_kind", type=click.Choice(["memory", "etcd"]), default="memory", show_default=True)
@click.option("--etcd-endpoints", default="http://127.0.0.1:2379", show_default=True,
              help="Comma-separated etcd client URLs (with --store etcd).")
@click.option("--etcd-prefix", default="/meshcast/v1/local/", show_default=True, help="Key prefix in etcd.")
@click.option("--etcd-user", envvar="MESHCAST_ETCD_USER", default=None, help="etcd user (or MESHCAST_ETCD_USER).")
@click.option("--etcd-password", envvar="MESHCAST_ETCD_PASSWORD", default=None,
              help="etcd password (prefer MESHCAST_ETCD_PASSWORD).")
@etcd_tls_options("etcd", "etcd")
@click.option("--api-addr", default="127.0.0.1:5681", show_default=True, help="Address of the HTTP API.")
@click.option("--dp-addr", default="127.0.0.1:5678", show_default=True,
              help="Address of the dataplane server (sidecars' config streams).")
@click.option("--state-dir", type=click.Path(path_type=Path), default=Path("/var/lib/meshcast/zone"),
              show_default=True, help="Where CA and token-signing keys are kept (0600).")
@click.option("--zone", default="", help="Name of this zone (required with --global-etcd).")
@click.option("--global-etcd", default="",
              help="Comma-separated client URLs of the global etcd: federate with the global control plane.")
@click.option("--global-etcd-user", envvar="MESHCAST_GLOBAL_ETCD_USER", default=None,
              help="This zone's etcd user in the global etcd (or MESHCAST_GLOBAL_ETCD_USER).")
@click.option("--global-etcd-password", envvar="MESHCAST_GLOBAL_ETCD_PASSWORD", default=None,
              help="Its password (prefer MESHCAST_GLOBAL_ETCD_PASSWORD).")
@etcd_tls_options("global-etcd", "the global etcd")
@click.option("--global-cp", default="", help="URL of the global control plane's API (to join with a zone token).")
@click.option("--zone-token-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Zone token from the global CP (meshcast generate zone-token): exchanged for etcd credentials.")
@click.option("--zone-lease-ttl", type=click.IntRange(2, 300), default=10, show_default=True,
              help="Seconds after which a dead zone CP's inventory vanishes from the global keyspace.")
@click.option("--heartbeat-timeout", type=float, default=10.0, show_default=True,
              help="Seconds of silence after which a dataplane leaves every endpoint list.")
@click.option("--heartbeat-interval", type=float, default=2.0, show_default=True,
              help="Seconds between heartbeats that sidecars are asked to send.")
@click.option("--no-default-mesh", is_flag=True, help="Do not create the mesh 'default' on start.")
@click.option("--allow-remote-admin", is_flag=True, help="Serve token issuing to non-loopback callers.")
@click.option("--tls-cert", type=click.Path(exists=True, path_type=Path), default=None)
@click.option("--tls-key", type=click.Path(exists=True, path_type=Path), default=None)
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info")
def zone_cp_run(**options: Any) -> None:
    """Run a zone control plane until SIGTERM or SIGINT."""
    from meshcast.cli.run_zone import run_zone_cp

    _logging(options.pop("log_level"))
    run_zone_cp(**options)


@cli.group("global-cp")
def global_cp() -> None:
    """The global control plane: meshes and policies for every zone, federated over etcd."""


@global_cp.command("run")
@config_option
@click.option("--etcd-endpoints", default="http://127.0.0.1:2379", show_default=True,
              help="Comma-separated client URLs of the global etcd.")
@click.option("--etcd-user", envvar="MESHCAST_ETCD_USER", default=None, help="etcd user (or MESHCAST_ETCD_USER).")
@click.option("--etcd-password", envvar="MESHCAST_ETCD_PASSWORD", default=None,
              help="etcd password (prefer MESHCAST_ETCD_PASSWORD).")
@etcd_tls_options("etcd", "etcd")
@click.option("--api-addr", default="127.0.0.1:5681", show_default=True, help="Address of the HTTP API.")
@click.option("--state-dir", type=click.Path(path_type=Path), default=Path("/var/lib/meshcast/global"),
              show_default=True, help="Where the global CP's keys are kept (0600).")
@click.option("--no-default-mesh", is_flag=True, help="Do not create the mesh 'default' on start.")
@click.option("--allow-remote-admin", is_flag=True, help="Serve token issuing to non-loopback callers.")
@click.option("--tls-cert", type=click.Path(exists=True, path_type=Path), default=None)
@click.option("--tls-key", type=click.Path(exists=True, path_type=Path), default=None)
@click.option("--intermediate-validity", default="8760h", show_default=True,
              help="Lifetime of the zone intermediate CAs it signs (zones renew theirs at 2/3 of it), e.g. 2160h.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info")
def global_cp_run(**options: Any) -> None:
    """Run the global control plane until SIGTERM or SIGINT."""
    from meshcast.cli.run_zone import run_global_cp

    _logging(options.pop("log_level"))
    run_global_cp(**options)


@cli.group("ingress")
def ingress_group() -> None:
    """The zone ingress: receives other zones' traffic and routes it by SNI, without terminating TLS."""


@ingress_group.command("run")
@config_option
@click.option("--cp", "cp_url", envvar="MESHCAST_CP", default=DEFAULT_CP, show_default=True,
              help="URL of the zone control plane's API.")
@click.option("--token-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="File holding the ingress token (meshcast generate ingress-token).")
@click.option("--addr", default="127.0.0.1:10001", show_default=True, help="Address to listen on.")
@click.option("--advertise-addr", default=None,
              help="host:port other zones connect to [default: --addr]; required when listening on 0.0.0.0.")
@click.option("--admin-addr", default="127.0.0.1:9902", show_default=True, help="Address of /ready, /metrics, /config.")
@click.option("--state-dir", type=click.Path(path_type=Path), default=Path("/var/lib/meshcast/ingress"),
              show_default=True, help="Where the last routing table is kept.")
@click.option("--ca-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="CA to verify an https zone control plane.")
@click.option("--drain-timeout", type=float, default=30.0, show_default=True,
              help="On SIGTERM: seconds to let spliced connections finish once other zones stop calling this "
                   "ingress; busy ones are closed then.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info")
def ingress_run(cp_url: str, log_level: str, **options: Any) -> None:
    """Run a zone ingress until SIGTERM or SIGINT (then drain)."""
    from meshcast.cli.run_ingress import run_ingress

    _logging(log_level)
    run_ingress(cp=cp_url, **options)


@cli.group("dataplane")
def dataplane_group() -> None:
    """The sidecar proxy."""


@dataplane_group.command("run")
@config_option
@click.option("--cp", "cp_url", envvar="MESHCAST_CP", default=DEFAULT_CP, show_default=True,
              help="URL of the zone control plane's API.")
@click.option("--token-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="File holding the dataplane token (meshcast generate dataplane-token).")
@click.option("--dataplane-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="YAML or JSON file with this sidecar's Dataplane resource.")
@click.option("--state-dir", type=click.Path(path_type=Path), default=None,
              help="Where the last config and the identity are kept [default: /var/lib/meshcast/dataplanes/M/N].")
@click.option("--admin-addr", default="127.0.0.1:9901", show_default=True, help="Address of /ready, /metrics, /config.")
@click.option("--ca-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="CA to verify an https control plane.")
@click.option("--drain-timeout", type=float, default=10.0, show_default=True,
              help="Seconds to let connections in flight finish after SIGTERM.")
@click.option("--workers", type=int, default=1, show_default=True,
              help="Processes sharing the listeners (SO_REUSEPORT); 1 for a sidecar, one per core for gateways.")
@click.option("--follower", is_flag=True, hidden=True, help="Internal: a worker process following the leader's state.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info")
def dataplane_run(cp_url: str, log_level: str, **options: Any) -> None:
    """Run a sidecar until SIGTERM or SIGINT (then drain)."""
    from meshcast.cli.run_dataplane import run_dataplane

    _logging(log_level)
    run_dataplane(cp=cp_url, **options)


@cli.group("bgp")
def bgp_group() -> None:
    """Anycast: ExaBGP with the speaker that announces the region's prefixes while its gateway is ready."""


REGION_FILE = click.option("--region-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                           required=True, help="The region's BGP settings (YAML or JSON; see docs/anycast.md).")
CHECK_REGIONS = click.option(
    "--check-regions", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
    help="Directory with every region's settings: refuse a change that leaves a prefix announced by no primary region.")
RETIRE = click.option("--retire", multiple=True, metavar="PREFIX",
                      help="With --check-regions: a prefix meant to be announced by no region any more (repeat).")


@bgp_group.command("config")
@REGION_FILE
@CHECK_REGIONS
@RETIRE
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write exabgp.conf here (atomically) instead of printing it.")
def bgp_config(region_file: Path, check_regions: Path | None, retire: tuple[str, ...], output: Path | None) -> None:
    """Check the region's settings and render exabgp.conf."""
    from meshcast.cli import run_bgp

    run_bgp.config(region_file, check_regions, retire, output)


@bgp_group.command("run")
@REGION_FILE
@CHECK_REGIONS
@RETIRE
@click.option("--exabgp", default=None, help="The exabgp program [default: beside this Python, else on PATH].")
@click.option("--conf-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write exabgp.conf [default: STATE_DIR/REGION.exabgp.conf].")
def bgp_run(region_file: Path, check_regions: Path | None, retire: tuple[str, ...], exabgp: str | None,
            conf_file: Path | None) -> None:
    """Render exabgp.conf and exec ExaBGP on it (foreground, same PID), which runs the speaker."""
    from meshcast.cli import run_bgp

    run_bgp.run(region_file, check_regions, retire, exabgp, conf_file)


@bgp_group.command("status")
@click.option("--region-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="The region's settings (the status file is in its stateDir).")
@click.option("--status-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The speaker's status file.")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
def bgp_status(region_file: Path | None, status_file: Path | None, output: str) -> None:
    """What the speaker announces and why: last probes, damping state, ExaBGP's answers."""
    from meshcast.cli import run_bgp

    run_bgp.status(region_file, status_file, output)


@bgp_group.command("drain")
@click.option("--region-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None)
@click.option("--drain-file", type=click.Path(dir_okay=False, path_type=Path), default=None)
def bgp_drain(region_file: Path | None, drain_file: Path | None) -> None:
    """Withdraw the region's prefixes whatever the gateway says, until `meshcast bgp undrain`."""
    from meshcast.cli import run_bgp

    run_bgp.drain(region_file, drain_file, True)


@bgp_group.command("undrain")
@click.option("--region-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None)
@click.option("--drain-file", type=click.Path(dir_okay=False, path_type=Path), default=None)
def bgp_undrain(region_file: Path | None, drain_file: Path | None) -> None:
    """Lift a drain: the prefixes are announced again once the gateway is ready (rise)."""
    from meshcast.cli import run_bgp

    run_bgp.drain(region_file, drain_file, False)


@bgp_group.command("speaker")
@REGION_FILE
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info")
def bgp_speaker(region_file: Path, log_level: str) -> None:
    """The program ExaBGP runs as its `process` (text API on stdin/stdout); exits when ExaBGP closes stdin."""
    from meshcast.cli import run_bgp

    _logging(log_level)
    run_bgp.speaker(region_file)


@cli.group("gateway")
def gateway_group() -> None:
    """The edge gateway: the data-plane proxy serving a MeshGateway on the region's anycast addresses."""


@gateway_group.command("run")
@config_option
@click.option("--cp", "cp_url", envvar="MESHCAST_CP", default=DEFAULT_CP, show_default=True,
              help="URL of the zone control plane's API.")
@click.option("--token-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="Dataplane token allowing the gateway's name as its service.")
@click.option("--dataplane-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="The gateway's Dataplane: spec.gateway names its MeshGateway.")
@click.option("--state-dir", type=click.Path(path_type=Path), default=None,
              help="Where the last config and the identity are kept [default: /var/lib/meshcast/dataplanes/M/N].")
@click.option("--admin-addr", default="127.0.0.1:9901", show_default=True,
              help="Address of /ready (what the BGP speaker polls), /metrics, /config, POST /drain.")
@click.option("--ca-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="CA to verify an https control plane.")
@click.option("--drain-timeout", type=float, default=30.0, show_default=True,
              help="Seconds to let requests in flight finish once draining.")
@click.option("--withdraw-delay", type=float, default=2.0, show_default=True,
              help="Seconds between turning unready (the BGP speaker withdraws) and closing the listeners.")
@click.option("--while-withdrawing", type=click.Choice(["drop", "serve"]), default="drop", show_default=True,
              help="New connections during the withdraw delay: drop their SYNs, so clients retry them in ~1 s and "
                   "follow the moved route (anycast), or serve them one request each (behind a load balancer that "
                   "polls /ready).")
@click.option("--workers", type=int, default=os.cpu_count() or 1, show_default="one per core",
              help="Processes sharing the listeners (SO_REUSEPORT).")
@click.option("--follower", is_flag=True, hidden=True, help="Internal: a worker process following the leader's state.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info")
def gateway_run(cp_url: str, log_level: str, **options: Any) -> None:
    """Run an edge gateway until SIGTERM, SIGINT or `meshcast gateway drain` (then drain)."""
    from meshcast.cli.run_dataplane import run_dataplane

    _logging(log_level)
    run_dataplane(cp=cp_url, gateway=True, **options)


@gateway_group.command("drain")
@click.option("--admin-addr", default="127.0.0.1:9901", show_default=True, help="The gateway's admin address.")
@click.option("--timeout", type=float, default=60.0, show_default=True, help="Seconds to wait for it to exit.")
def gateway_drain(admin_addr: str, timeout: float) -> None:
    """Drain a gateway: unready (its region's prefixes are withdrawn), connections told to go, requests in flight
    finish, then it exits. Returns when it has exited."""
    # The standard library's client, not httpx: a plain request to a loopback admin, and the route is withdrawn
    # that much sooner (importing httpx took ~0.15 s of this command's start).
    import http.client
    import time

    from zone_cp.config import split_host_port

    try:
        host, port = split_host_port(admin_addr, default_port=9901)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--admin-addr") from None

    def request(method: str, path: str, timeout: float) -> int:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        try:
            conn.request(method, path)
            return conn.getresponse().status
        finally:
            conn.close()

    try:
        status = request("POST", "/drain", 5)
    except OSError as exc:
        raise click.ClickException(f"cannot ask the gateway at {admin_addr} to drain: {exc}") from None
    if status >= 300:
        raise click.ClickException(f"the gateway at {admin_addr} answered HTTP {status} to POST /drain")
    click.echo(f"gateway at {admin_addr}: draining")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            request("GET", "/ready", 1)
        except (OSError, http.client.HTTPException):
            click.echo("drained: the gateway has exited")
            return
        time.sleep(0.2)
    raise click.ClickException(f"the gateway at {admin_addr} is still running after {timeout:.0f}s")


def _logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    for noisy in ("httpx", "httpcore", "hpack", "hypercorn.error"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


def main() -> None:
    try:
        cli(standalone_mode=True)
    except MeshcastError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
