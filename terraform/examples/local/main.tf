# A whole two-region Meshcast deployment on one machine: the same modules as on bare metal, with every node on its
# own loopback address (127.0.0.x) and every listener on its own port, and every node's files written into
# <output_dir>/<node>/ (root_dir). Nothing runs: start the processes from those files (their --config YAMLs), as
# the integration tests do. tests/support/tftemplate.py local_example_files() computes the same files in Python.

locals {
  root = abspath(var.output_dir)
  p    = var.ports
  tls  = var.tls_dir != null

  etcd_members = [
    { name = "etcd-1", address = "127.0.0.3", client_port = local.p.etcd_1_client, peer_port = local.p.etcd_1_peer, metrics_port = local.p.etcd_1_metrics },
    { name = "etcd-2", address = "127.0.0.4", client_port = local.p.etcd_2_client, peer_port = local.p.etcd_2_peer, metrics_port = local.p.etcd_2_metrics },
    { name = "etcd-3", address = "127.0.0.5", client_port = local.p.etcd_3_client, peer_port = local.p.etcd_3_peer, metrics_port = local.p.etcd_3_metrics },
  ]

  # Per region: what the region module gets besides the settings common to both (see README.md).
  regions = {
    eu = {
      zone_cp = {
        name              = "eu-cp"
        address           = "127.0.0.11"
        listen_address    = "127.0.0.11"
        api_port          = local.p.eu_cp_api
        dp_port           = local.p.eu_cp_dp
        etcd_client_port  = local.p.eu_cp_etcd_client
        etcd_peer_port    = local.p.eu_cp_etcd_peer
        etcd_metrics_port = local.p.eu_cp_etcd_metrics
      }
      ingresses = [{
        name           = "eu-ingress"
        address        = "127.0.0.12"
        listen_address = "127.0.0.12"
        port           = local.p.eu_ingress
        admin_port     = local.p.eu_ingress_admin
      }]
      gateways = [{ name = "eu-gw", address = "127.0.0.13", admin_port = local.p.eu_gateway_admin }]
      gateway  = {
        name       = "edge-eu"
        http_port  = local.p.eu_gateway_http
        https_port = local.p.eu_gateway_https
        routes     = [{ to = "web" }]
      }
      service_hosts = [{
        name      = "eu-apps"
        address   = "127.0.0.14"
        instances = [
          {
            name       = "eu-web-1"
            service    = "web"
            port       = local.p.eu_web_1
            app_port   = local.p.eu_web_1_app
            admin_port = local.p.eu_web_1_admin
            tags       = { version = "v1" }
            # backend runs in both regions (calls stay in eu), api only in us (calls cross to us's ingress).
            outbound = [
              { port = local.p.eu_web_1_backend, service = "backend" },
              { port = local.p.eu_web_1_api, service = "api" },
            ]
          },
          {
            name       = "eu-backend-1"
            service    = "backend"
            port       = local.p.eu_backend_1
            app_port   = local.p.eu_backend_1_app
            admin_port = local.p.eu_backend_1_admin
            tags       = { version = "v1" }
            outbound   = []
          },
        ]
      }]
    }
    us = {
      zone_cp = {
        name              = "us-cp"
        address           = "127.0.0.21"
        listen_address    = "127.0.0.21"
        api_port          = local.p.us_cp_api
        dp_port           = local.p.us_cp_dp
        etcd_client_port  = local.p.us_cp_etcd_client
        etcd_peer_port    = local.p.us_cp_etcd_peer
        etcd_metrics_port = local.p.us_cp_etcd_metrics
      }
      ingresses = [{
        name           = "us-ingress"
        address        = "127.0.0.22"
        listen_address = "127.0.0.22"
        port           = local.p.us_ingress
        admin_port     = local.p.us_ingress_admin
      }]
      gateways = [{ name = "us-gw", address = "127.0.0.23", admin_port = local.p.us_gateway_admin }]
      gateway  = {
        name       = "edge-us"
        http_port  = local.p.us_gateway_http
        https_port = local.p.us_gateway_https
        routes     = [{ to = "web" }]
      }
      service_hosts = [{
        name      = "us-apps"
        address   = "127.0.0.24"
        instances = [
          {
            name       = "us-backend-1"
            service    = "backend"
            port       = local.p.us_backend_1
            app_port   = local.p.us_backend_1_app
            admin_port = local.p.us_backend_1_admin
            tags       = { version = "v1" }
            outbound   = []
          },
          {
            name       = "us-api-1"
            service    = "api"
            port       = local.p.us_api_1
            app_port   = local.p.us_api_1_app
            admin_port = local.p.us_api_1_admin
            tags       = { version = "v1" }
            outbound   = []
          },
        ]
      }]
    }
  }
}

module "global" {
  source = "../../modules/global"

  meshcast_package = var.meshcast_package
  meshcast_venv    = var.meshcast_venv
  root_dir         = local.root
  global_cp        = { name = "global-cp", address = "127.0.0.2", api_port = local.p.global_cp_api }
  etcd_members     = local.etcd_members
  etcd_tls         = local.tls ? {
    ca_cert      = file("${var.tls_dir}/ca.crt")
    member_certs = { for m in local.etcd_members : m.name => file("${var.tls_dir}/${m.name}.crt") }
    client_cert  = file("${var.tls_dir}/global-cp-etcd-client.crt")
  } : null
  etcd_tls_keys = local.tls ? {
    members = { for m in local.etcd_members : m.name => file("${var.tls_dir}/${m.name}.key") }
    client  = file("${var.tls_dir}/global-cp-etcd-client.key")
  } : null
  etcd_root_password  = var.etcd_root_password
  zone_etcd_passwords = var.zone_passwords
  # Each region's gateways serve their own MeshGateway (edge-eu, edge-us: they listen on different ports here).
  resources = [module.region["eu"].mesh_gateway, module.region["us"].mesh_gateway]
}

module "region" {
  source   = "../../modules/region"
  for_each = local.regions

  region                  = each.key
  meshcast_package        = var.meshcast_package
  meshcast_venv           = var.meshcast_venv
  root_dir                = local.root
  zone_cp                 = each.value.zone_cp
  zone_store              = "etcd"
  zone_etcd_root_password = var.zone_etcd_root_passwords[each.key]
  global_etcd_endpoints   = module.global.etcd_endpoints
  global_etcd_password    = var.zone_passwords[each.key]
  global_etcd_tls         = local.tls ? {
    ca_cert     = file("${var.tls_dir}/ca.crt")
    client_cert = file("${var.tls_dir}/${each.key}-etcd-client.crt")
  } : null
  global_etcd_client_key = local.tls ? file("${var.tls_dir}/${each.key}-etcd-client.key") : null
  cp_tls                 = local.tls ? {
    ca_cert = file("${var.tls_dir}/ca.crt")
    cert    = file("${var.tls_dir}/${each.key}-cp.crt")
  } : null
  cp_tls_key = local.tls ? file("${var.tls_dir}/${each.key}-cp.key") : null
  ingresses  = each.value.ingresses
  gateways   = each.value.gateways
  gateway    = each.value.gateway
  # Both regions' gateways listen on this address (on lo already: no privilege needed), on their own ports. No BGP
  # speaker: it needs a router, and BGP refuses loopback prefixes (see docs/anycast.md for a region with one).
  anycast_addresses = ["127.0.0.100"]
  service_hosts     = each.value.service_hosts
}

locals {
  # Node directories differ, so no path repeats across nodes. (Only a call's last argument can be expanded.)
  files = merge(concat(values(module.global.files), values(module.region["eu"].files), values(module.region["us"].files))...)
  # Sensitive maps: iterate over their (not sensitive) paths, look the contents up by node.
  secret_contents = merge(module.global.secret_files, module.region["eu"].secret_files, module.region["us"].secret_files)
  secret_paths    = merge(
    { for node, paths in module.global.secret_paths : node => paths },
    { for node, paths in module.region["eu"].secret_paths : node => paths },
    { for node, paths in module.region["us"].secret_paths : node => paths },
  )
  secrets = merge([for node, paths in local.secret_paths : { for path in paths : path => node }]...)
}

resource "local_file" "files" {
  for_each = local.files

  filename             = each.key
  content              = each.value
  file_permission      = "0644"
  directory_permission = "0755"
}

resource "local_sensitive_file" "secrets" {
  for_each = local.secrets

  filename             = each.key
  content              = local.secret_contents[each.value][each.key]
  file_permission      = "0600"
  directory_permission = "0755"
}
