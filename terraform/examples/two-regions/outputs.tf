output "nodes" {
  description = "map(node => {address, metro, roles}): every device, with the address its configuration uses."
  value       = {
    for n, node in local.nodes : n => {
      address = local.address[n]
      metro   = node.metro
      roles   = concat(try(module.global.nodes[n].roles, []), flatten([for r in local.region_names : try(module.region[r].nodes[n].roles, [])]))
    }
  }
}

output "anycast_address" {
  description = "The global anycast IPv4 address every region's gateways serve and announce."
  value       = local.anycast
}

output "ca_cert" {
  description = "The CA of the zone control planes' certificates: `meshcast --ca-file` for their APIs."
  value       = tls_self_signed_cert.ca.cert_pem
}

output "cp_urls" {
  description = "map(region => the zone control plane's API URL)."
  value       = { for r in local.region_names : r => module.region[r].cp_url }
}

output "tokens" {
  description = "map(node => list({path, kind, services})): the tokens to issue on each zone control plane and deliver (README.md)."
  value       = merge([for r in local.region_names : module.region[r].tokens]...)
}

output "global_cp" {
  description = "Where the global control plane's API answers: on its node's loopback (`ssh root@<address> meshcast --cp <url> ...`)."
  value       = { address = local.address["global-cp"], url = module.global.global_cp_url }
}
