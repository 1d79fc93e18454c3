# Everything a node needs, keyed by node name (zone_cp.name, each ingress, gateway and service host name).

output "files" {
  description = "map(node => map(path => content)): every file a node runs from except secrets (configurations, Dataplanes, BGP settings, systemd units, certificates). Paths are absolute on the node, under <root_dir>/<node> when root_dir is set."
  value       = local.files

  precondition {
    condition     = length(local.node_addresses) == length(local.node_names)
    error_message = "A node name is used with two different addresses (a node may hold several roles, at one address)."
  }
  precondition {
    condition     = var.global_etcd_tls != null || alltrue([for u in var.global_etcd_endpoints : startswith(u, "http://127.")])
    error_message = "global_etcd_tls is required unless the global etcd is on loopback: the zone's etcd password would cross the network in clear."
  }
  precondition {
    condition     = var.global_etcd_tls == null || var.global_etcd_client_key != null
    error_message = "global_etcd_client_key is required with global_etcd_tls."
  }
  precondition {
    condition     = var.cp_tls != null || alltrue([for a in values(local.addresses) : startswith(a, "127.")])
    error_message = "cp_tls is required unless every node is on loopback: dataplane tokens would cross the network in clear."
  }
  precondition {
    condition     = var.cp_tls == null || var.cp_tls_key != null
    error_message = "cp_tls_key is required with cp_tls."
  }
  precondition {
    condition     = var.zone_store != "etcd" || var.zone_etcd_root_password != null
    error_message = "zone_etcd_root_password is required with zone_store = etcd."
  }
  precondition {
    condition     = length(var.gateways) == 0 || (var.gateway != null && length(var.anycast_addresses) > 0)
    error_message = "Gateways need var.gateway (the MeshGateway they serve) and at least one anycast address."
  }
  precondition {
    condition     = var.gateway == null ? true : alltrue([for c in var.gateway.certificates : contains(keys(var.gateway_tls_keys), c.name)])
    error_message = "gateway_tls_keys needs a key for every gateway certificate."
  }
  precondition {
    condition     = alltrue([for n in concat(keys(var.extra_files), keys(var.extra_units)) : contains(local.node_names, n)])
    error_message = "extra_files and extra_units may only name nodes of this region."
  }
}

output "secret_files" {
  description = "map(node => map(path => content)): the node's secrets (the zone control plane's environment file with its etcd passwords, TLS private keys). Sensitive; cloud-init writes them 0600 root or 0640 to the group that reads them."
  value       = { for n, f in local.secret_files : n => { for path, s in f : path => s.content } }
  sensitive   = true
}

output "secret_paths" {
  description = "map(node => list(path)): the paths of secret_files, not sensitive, so that a caller can iterate over them (for_each cannot iterate over sensitive values)."
  value       = { for n, f in local.secret_files : n => sort(keys(f)) }
}

output "units" {
  description = "map(node => list(unit)): the systemd units cloud-init enables and starts on the node, in start order (extra_units first). Units whose token is not delivered yet are enabled but skipped until it is."
  value       = local.units
}

output "user_data" {
  description = "map(node => cloud-init document): installs the packages and Meshcast (into meshcast_venv from meshcast_package), writes files and secret_files, creates /etc/meshcast/tokens (0750 root:meshcast), masks Debian's own etcd.service and enables the units. Sensitive: it carries the secrets."
  value       = local.user_data
  sensitive   = true
}

output "nodes" {
  description = "map(node => {address, roles}): the region's nodes, roles among zone-cp, ingress, gateway and service-host."
  value       = {
    for n in local.node_names : n => {
      address = local.addresses[n]
      roles   = concat(
        n == local.cp.name ? ["zone-cp"] : [],
        contains([for i in var.ingresses : i.name], n) ? ["ingress"] : [],
        contains([for g in var.gateways : g.name], n) ? ["gateway"] : [],
        contains([for h in var.service_hosts : h.name], n) ? ["service-host"] : [],
      )
    }
  }
}

output "cp_url" {
  description = "The zone control plane's API URL, as its clients reach it (https with cp_tls)."
  value       = local.cp_url
}

output "mesh_gateway" {
  description = "The MeshGateway the region's gateways serve (YAML), or null without gateways. It is a global resource: pass it to the global module's `resources` (regions that share one gateway name must render the same document)."
  value       = length(var.gateways) > 0 ? local.mesh_gateway : null
}

output "bgp_region_files" {
  description = "map(gateway => BGP settings YAML): each gateway's region file (they differ by router id), e.g. for `meshcast bgp config --check-regions` in the pipeline that ships them."
  value       = local.bgp_files
}

output "tokens" {
  description = "map(node => list({path, kind, services})): the tokens to deliver out of band once the zone control plane runs (`meshcast generate ingress-token` or `dataplane-token --service ...` there), and where. Their units start once they are in place."
  value       = {
    for n in local.node_names : n => concat(
      contains([for i in var.ingresses : i.name], n) ? [{ path = "${local.root[n]}/etc/meshcast/tokens/ingress.token", kind = "ingress", services = [] }] : [],
      contains([for g in var.gateways : g.name], n) ? [{ path = "${local.root[n]}/etc/meshcast/tokens/gateway.token", kind = "dataplane", services = [local.gw.name] }] : [],
      flatten([for h in var.service_hosts : [for i in h.instances : { path = "${local.root[n]}/etc/meshcast/tokens/${i.name}.token", kind = "dataplane", services = [i.service] }] if h.name == n]),
    )
  }
}
