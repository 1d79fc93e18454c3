# Two regions of Meshcast on Equinix Metal: devices per role per metro, a global etcd over three metros, a global
# anycast address announced by every region's gateways over BGP, and every device configured by the modules'
# cloud-init (user data). Credentials: METAL_AUTH_TOKEN in the environment (the equinix provider reads it).
#
# Addresses are known before the devices exist, so that certificates and configurations can name them: each
# device gets its public IPv4 from a /31 reserved for it, and uses the upper address of that /31 (Equinix's
# gateway being the lower one). A check block warns after apply if a device got another address.

provider "equinix" {}

locals {
  region_names = sort(keys(var.regions))
  etcd_members = [for i, metro in var.etcd_metros : "etcd-${i + 1}"]
  gateways     = { for r, cfg in var.regions : r => [for n in range(cfg.gateways) : "${r}-gw-${n + 1}"] }

  # Every device: its metro and plan.
  nodes = merge(
    # (An unknown global_region is reported by the devices' precondition.)
    { "global-cp" = { metro = lookup(var.regions, var.global_region, values(var.regions)[0]).metro, plan = var.plans.control } },
    { for i, metro in var.etcd_metros : "etcd-${i + 1}" => { metro = metro, plan = var.plans.etcd } },
    { for r, cfg in var.regions : "${r}-cp" => { metro = cfg.metro, plan = var.plans.control } },
    { for r, cfg in var.regions : "${r}-ingress" => { metro = cfg.metro, plan = var.plans.control } },
    { for r, cfg in var.regions : "${r}-apps-1" => { metro = cfg.metro, plan = var.plans.apps } },
    merge([for r, cfg in var.regions : { for g in local.gateways[r] : g => { metro = cfg.metro, plan = var.plans.gateway } }]...),
  )
  address = { for n, block in equinix_metal_reserved_ip_block.node : n => cidrhost(block.cidr_notation, 1) }
  anycast = equinix_metal_reserved_ip_block.anycast.address
}

resource "equinix_metal_project" "mesh" {
  name            = var.project_name
  organization_id = var.organization_id

  # Local BGP: the gateways announce the global anycast address to their metro's routers. No MD5 password:
  # Meshcast's BGP settings have none.
  bgp_config {
    deployment_type = "local"
    asn             = var.bgp_asn
  }
}

resource "equinix_metal_reserved_ip_block" "node" {
  for_each = local.nodes

  project_id  = equinix_metal_project.mesh.id
  type        = "public_ipv4"
  metro       = each.value.metro
  quantity    = 2
  description = "meshcast ${each.key}"
}

resource "equinix_metal_reserved_ip_block" "anycast" {
  project_id  = equinix_metal_project.mesh.id
  type        = "global_ipv4"
  quantity    = 1
  description = "meshcast edge (anycast)"
}

# --- certificates: one CA for etcd (members, clients) and the zone control planes ------------------------------

resource "tls_private_key" "ca" {
  algorithm   = "ECDSA"
  ecdsa_curve = "P256"
}

resource "tls_self_signed_cert" "ca" {
  private_key_pem       = tls_private_key.ca.private_key_pem
  is_ca_certificate     = true
  validity_period_hours = 5 * 8760
  allowed_uses          = ["cert_signing", "crl_signing"]

  subject {
    common_name  = "meshcast ${var.project_name} CA"
    organization = "meshcast"
  }
}

locals {
  # name => subject common name (null: none for etcd clients, else etcd would take it as the user of requests
  # without a token; they log in with a password), IP SANs, DNS SANs, extended key usages.
  certificates = merge(
    { for m in local.etcd_members : m => { cn = m, ips = [local.address[m]], dns = [], uses = ["server_auth", "client_auth"] } },
    { for c in concat(["global-cp"], local.region_names) : "${c}-etcd-client" => { cn = null, ips = [], dns = [], uses = ["client_auth"] } },
    { for r in local.region_names : "${r}-cp" => { cn = "${r}-cp", ips = [local.address["${r}-cp"], "127.0.0.1"], dns = ["localhost"], uses = ["server_auth"] } },
  )
}

resource "tls_private_key" "cert" {
  for_each = local.certificates

  algorithm   = "ECDSA"
  ecdsa_curve = "P256"
}

resource "tls_cert_request" "cert" {
  for_each = local.certificates

  private_key_pem = tls_private_key.cert[each.key].private_key_pem
  ip_addresses    = each.value.ips
  dns_names       = each.value.dns

  subject {
    common_name  = each.value.cn
    organization = "meshcast"
  }
}

resource "tls_locally_signed_cert" "cert" {
  for_each = local.certificates

  cert_request_pem      = tls_cert_request.cert[each.key].cert_request_pem
  ca_private_key_pem    = tls_private_key.ca.private_key_pem
  ca_cert_pem           = tls_self_signed_cert.ca.cert_pem
  validity_period_hours = 8760
  early_renewal_hours   = 720
  allowed_uses          = concat(["digital_signature", "key_agreement"], each.value.uses)
}

# --- passwords ----------------------------------------------------------------------------------------------------

resource "random_password" "etcd_root" {
  length  = 32
  special = false
}

resource "random_password" "zone" {
  for_each = var.regions

  length  = 32
  special = false
}

resource "random_password" "zone_etcd_root" {
  for_each = var.regions

  length  = 32
  special = false
}

# --- Meshcast --------------------------------------------------------------------------------------------------

module "global" {
  source = "../../modules/global"

  meshcast_package = var.meshcast_package
  global_cp        = { name = "global-cp", address = local.address["global-cp"] }
  etcd_members     = [for m in local.etcd_members : { name = m, address = local.address[m] }]
  # Members in distant metros: heartbeats near the round trip between them.
  etcd_timers = { heartbeat_ms = 250, election_ms = 2500 }
  etcd_tls    = {
    ca_cert      = tls_self_signed_cert.ca.cert_pem
    member_certs = { for m in local.etcd_members : m => tls_locally_signed_cert.cert[m].cert_pem }
    client_cert  = tls_locally_signed_cert.cert["global-cp-etcd-client"].cert_pem
  }
  etcd_tls_keys = {
    members = { for m in local.etcd_members : m => tls_private_key.cert[m].private_key_pem }
    client  = tls_private_key.cert["global-cp-etcd-client"].private_key_pem
  }
  etcd_root_password  = random_password.etcd_root.result
  zone_etcd_passwords = { for r in local.region_names : r => random_password.zone[r].result }
  # Every region serves the same MeshGateway `edge` on the same anycast address: one document.
  resources = distinct([for r in local.region_names : module.region[r].mesh_gateway])
}

module "region" {
  source   = "../../modules/region"
  for_each = var.regions

  region                  = each.key
  meshcast_package        = var.meshcast_package
  zone_cp                 = { name = "${each.key}-cp", address = local.address["${each.key}-cp"] }
  zone_etcd_root_password = random_password.zone_etcd_root[each.key].result
  global_etcd_endpoints   = module.global.etcd_endpoints
  global_etcd_password    = random_password.zone[each.key].result
  global_etcd_tls         = {
    ca_cert     = tls_self_signed_cert.ca.cert_pem
    client_cert = tls_locally_signed_cert.cert["${each.key}-etcd-client"].cert_pem
  }
  global_etcd_client_key = tls_private_key.cert["${each.key}-etcd-client"].private_key_pem
  cp_tls                 = {
    ca_cert = tls_self_signed_cert.ca.cert_pem
    cert    = tls_locally_signed_cert.cert["${each.key}-cp"].cert_pem
  }
  cp_tls_key = tls_private_key.cert["${each.key}-cp"].private_key_pem
  ingresses  = [{ name = "${each.key}-ingress", address = local.address["${each.key}-ingress"] }]
  gateways   = [for g in local.gateways[each.key] : { name = g, address = local.address[g] }]
  gateway    = {
    name         = "edge"
    routes       = var.gateway_routes
    certificates = var.edge_certificate == null ? [] : [
      { name = "edge", hosts = var.edge_certificate.hosts, cert = var.edge_certificate.cert },
    ]
  }
  gateway_tls_keys  = var.edge_certificate == null ? {} : { edge = var.edge_certificate_key }
  anycast_addresses = [local.anycast]
  bgp               = {
    local_asn = var.bgp_asn
    prefixes  = ["${local.anycast}/32"]
    peers     = [
      { address = "169.254.255.1", asn = 65530, description = "Equinix Metal router 1" },
      { address = "169.254.255.2", asn = 65530, description = "Equinix Metal router 2" },
    ]
  }
  service_hosts = [{
    name      = "${each.key}-apps-1"
    address   = local.address["${each.key}-apps-1"]
    instances = [for s, cfg in var.services : {
      name     = "${each.key}-${s}-1", service = s, port = cfg.port, app_port = cfg.app_port, admin_port = cfg.admin_port,
      protocol = cfg.protocol, tags = { metro = each.value.metro }, outbound = cfg.outbound
    }]
  }]
  # Equinix's BGP peers are reached through the private network's gateway: a route to each, set at every boot.
  extra_files = { for g in local.gateways[each.key] : g => {
    "/usr/local/lib/meshcast/equinix-bgp-routes.py"  = local.bgp_routes_script
    "/etc/systemd/system/equinix-bgp-routes.service" = local.bgp_routes_unit
  } }
  extra_units = { for g in local.gateways[each.key] : g => ["equinix-bgp-routes.service"] }
}

locals {
  bgp_routes_script = <<-EOT
    """Routes to Equinix Metal's BGP peers through this device's private gateway (read from the metadata service)."""
    import json
    import subprocess
    import time
    import urllib.request

    for attempt in range(60):
        try:
            with urllib.request.urlopen("https://metadata.platformequinix.com/metadata", timeout=10) as answer:
                metadata = json.load(answer)
            break
        except OSError:
            time.sleep(5)
    else:
        raise SystemExit("the metadata service did not answer")
    gateway = next(a["gateway"] for a in metadata["network"]["addresses"]
                   if not a["public"] and a["address_family"] == 4)
    for peer in ("169.254.255.1", "169.254.255.2"):
        subprocess.run(["ip", "route", "replace", peer + "/32", "via", gateway], check=True)
  EOT
  bgp_routes_unit = <<-EOT
    [Unit]
    Description=Routes to Equinix Metal's BGP peers
    After=network-online.target
    Wants=network-online.target
    Before=meshcast-bgp.service

    [Service]
    Type=oneshot
    RemainAfterExit=yes
    ExecStart=/usr/bin/python3 /usr/local/lib/meshcast/equinix-bgp-routes.py

    [Install]
    WantedBy=multi-user.target
  EOT
  user_data = merge(module.global.user_data, [for r in local.region_names : module.region[r].user_data]...)
}

resource "equinix_metal_device" "node" {
  for_each = local.nodes

  hostname         = each.key
  project_id       = equinix_metal_project.mesh.id
  metro            = each.value.metro
  plan             = each.value.plan
  operating_system = var.operating_system
  billing_cycle    = "hourly"
  user_data        = local.user_data[each.key]
  tags             = ["meshcast"]

  ip_address {
    type            = "public_ipv4"
    cidr            = 31
    reservation_ids = [equinix_metal_reserved_ip_block.node[each.key].id]
  }
  ip_address {
    type = "private_ipv4"
  }

  lifecycle {
    precondition {
      condition     = contains(keys(var.regions), var.global_region)
      error_message = "global_region must name one of the regions."
    }
  }
}

resource "equinix_metal_bgp_session" "gateway" {
  for_each = toset(flatten(values(local.gateways)))

  device_id      = equinix_metal_device.node[each.key].id
  address_family = "ipv4"
}

check "device_addresses" {
  assert {
    condition     = alltrue([for n, d in equinix_metal_device.node : d.access_public_ipv4 == local.address[n]])
    error_message = "A device's public IPv4 is not the upper address of its reserved /31, which its certificates and configurations name: see README.md."
  }
}
