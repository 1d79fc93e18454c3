output "nodes" {
  description = "map(node => {address, roles}) of the whole local mesh."
  value       = merge(module.global.nodes, module.region["eu"].nodes, module.region["us"].nodes)
}

output "tokens" {
  description = "map(node => list({path, kind, services})): the tokens to issue once the zone control planes run, and where to write them."
  value       = merge(module.region["eu"].tokens, module.region["us"].tokens)
}

output "global_cp_url" {
  description = "The global control plane's API."
  value       = module.global.global_cp_url
}

output "cp_urls" {
  description = "map(region => the zone control plane's API URL)."
  value       = { for region, m in module.region : region => m.cp_url }
}

output "root_dir" {
  description = "The absolute directory holding every node's files (<root_dir>/<node>/...)."
  value       = local.root
}
