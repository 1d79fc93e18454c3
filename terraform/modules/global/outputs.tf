# Everything a node needs, keyed by node name (global_cp.name and each etcd member's name).

output "files" {
  description = "map(node => map(path => content)): every file a node runs from except secrets (configurations, systemd units, certificates, the bootstrap script). Paths are absolute on the node, under <root_dir>/<node> when root_dir is set."
  value       = local.files

  precondition {
    condition     = var.etcd_tls != null || alltrue([for a in values(local.addresses) : startswith(a, "127.")])
    error_message = "etcd_tls is required unless every node is on loopback (127.0.0.0/8): etcd passwords and the mesh's state would cross the network in clear."
  }
  precondition {
    condition     = var.etcd_tls == null || var.etcd_tls_keys != null
    error_message = "etcd_tls_keys is required with etcd_tls."
  }
  precondition {
    condition     = var.etcd_tls == null ? true : alltrue([for m in var.etcd_members : contains(keys(var.etcd_tls.member_certs), m.name)])
    error_message = "etcd_tls.member_certs needs a certificate for every etcd member."
  }
  precondition {
    condition     = var.etcd_tls_keys == null ? true : alltrue([for m in var.etcd_members : contains(keys(var.etcd_tls_keys.members), m.name)])
    error_message = "etcd_tls_keys.members needs a key for every etcd member."
  }
  precondition {
    condition     = lookup(local.member_addresses, local.cp.name, local.cp.address) == local.cp.address
    error_message = "The global control plane shares its node with an etcd member of the same name, but not its address."
  }
}

output "secret_files" {
  description = "map(node => map(path => content)): the node's secrets (TLS private keys, the environment file with etcd's root password, the zones' passwords for the bootstrap). Sensitive; cloud-init writes them 0600 root or 0640 to the group that reads them."
  value       = { for n, f in local.secret_files : n => { for path, s in f : path => s.content } }
  sensitive   = true
}

output "secret_paths" {
  description = "map(node => list(path)): the paths of secret_files, not sensitive, so that a caller can iterate over them (for_each cannot iterate over sensitive values)."
  value       = { for n, f in local.secret_files : n => sort(keys(f)) }
}

output "units" {
  description = "map(node => list(unit)): the systemd units cloud-init enables and starts on the node, in start order."
  value       = local.units
}

output "user_data" {
  description = "map(node => cloud-init document): installs the packages and Meshcast (into meshcast_venv from meshcast_package), writes files and secret_files, masks Debian's own etcd.service and enables the units. Sensitive: it carries the secrets."
  value       = local.user_data
  sensitive   = true
}

output "nodes" {
  description = "map(node => {address, roles}): the nodes this module configures, roles among etcd and global-cp."
  value       = {
    for n in local.node_names : n => {
      address = local.addresses[n]
      roles   = concat(contains(keys(local.members), n) ? ["etcd"] : [], n == local.cp.name ? ["global-cp"] : [])
    }
  }
}

output "etcd_endpoints" {
  description = "The members' client URLs (https:// with TLS): what each region module's zone control plane dials (with its own client certificate under TLS)."
  value       = local.client_urls
}

output "global_cp_url" {
  description = "The global control plane's API URL on its own node (loopback only): `meshcast --cp <url> ...` over SSH."
  value       = local.cp_url
}
