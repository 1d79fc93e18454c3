# Inputs of the region module: one region's bare-metal nodes (its zone control plane, zone ingresses, edge gateways
# with their BGP sessions, and the hosts of service instances). The region's name is its Meshcast zone. Addresses
# are IPv4. Certificates and passwords are inputs (terraform/README.md).

variable "region" {
  type        = string
  description = "The region's name: its Meshcast zone, the BGP settings' region, and part of its etcd user (meshcast-zone-<region>)."

  validation {
    condition     = can(regex("^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", var.region))
    error_message = "region must be a DNS label: 1-63 lowercase letters, digits and '-', not starting or ending with '-'."
  }
}

variable "mesh" {
  type        = string
  description = "The mesh the region's Dataplanes and MeshGateway belong to."
  default     = "default"

  validation {
    condition     = can(regex("^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", var.mesh))
    error_message = "mesh must be a DNS label."
  }
}

variable "meshcast_package" {
  type        = string
  description = "What `pip install` installs Meshcast from into the nodes' virtualenv: a requirement (`meshcast==0.1.0`) or a wheel URL."

  validation {
    condition     = length(trimspace(var.meshcast_package)) > 0
    error_message = "meshcast_package must name a pip requirement or a wheel URL."
  }
}

variable "meshcast_venv" {
  type        = string
  description = "The virtualenv Meshcast is installed into on each node; units run its bin/meshcast and bin/python."
  default     = "/opt/meshcast/venv"

  validation {
    condition     = can(regex("^/[^\\s]*[^/\\s]$", var.meshcast_venv))
    error_message = "meshcast_venv must be an absolute path without spaces or a trailing slash."
  }
}

variable "root_dir" {
  type        = string
  description = "Empty for real machines. Otherwise each node's files, and every path written in them, live under <root_dir>/<node>/ instead of /, so that several nodes can run side by side on one machine (the local example, tests)."
  default     = ""

  validation {
    condition     = var.root_dir == "" || can(regex("^/[^\\s]*[^/\\s]$", var.root_dir))
    error_message = "root_dir must be empty or an absolute path without spaces or a trailing slash."
  }
}

variable "log_level" {
  type        = string
  description = "Log level of the Meshcast processes: debug, info, warning or error."
  default     = "info"

  validation {
    condition     = contains(["debug", "info", "warning", "error"], var.log_level)
    error_message = "log_level must be one of debug, info, warning, error."
  }
}

variable "zone_cp" {
  type = object({
    name              = string
    address           = string
    listen_address    = optional(string, "0.0.0.0")
    api_port          = optional(number, 5681)
    dp_port           = optional(number, 5678)
    etcd_client_port  = optional(number, 2379)
    etcd_peer_port    = optional(number, 2380)
    etcd_metrics_port = optional(number, 2381)
  })
  description = "The zone control plane's node: name (DNS label), the address sidecars, ingresses and gateways reach it at, the address its API and dataplane server listen on (0.0.0.0: every address, loopback included, so operators can issue tokens on the node), and its ports: API, dataplane server (config streams), and the zone's own etcd (client, peer, metrics; on 127.0.0.1)."

  validation {
    condition     = can(regex("^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", var.zone_cp.name))
    error_message = "zone_cp.name must be a DNS label."
  }
  validation {
    condition     = can(cidrnetmask("${var.zone_cp.address}/32")) && can(cidrnetmask("${var.zone_cp.listen_address}/32"))
    error_message = "zone_cp.address and zone_cp.listen_address must be IPv4 addresses."
  }
  validation {
    condition = alltrue([for p in [var.zone_cp.api_port, var.zone_cp.dp_port, var.zone_cp.etcd_client_port, var.zone_cp.etcd_peer_port, var.zone_cp.etcd_metrics_port] :
    p == floor(p) && p >= 1 && p <= 65535]) && length(distinct([var.zone_cp.api_port, var.zone_cp.dp_port, var.zone_cp.etcd_client_port, var.zone_cp.etcd_peer_port, var.zone_cp.etcd_metrics_port])) == 5
    error_message = "zone_cp ports must be distinct integers between 1 and 65535."
  }
}

variable "zone_store" {
  type        = string
  description = "Where the zone control plane keeps the zone's resources: etcd (a single-member etcd beside it on 127.0.0.1, with authentication: survives restarts) or memory (lost on restart; sidecars register again)."
  default     = "etcd"

  validation {
    condition     = contains(["etcd", "memory"], var.zone_store)
    error_message = "zone_store must be etcd or memory."
  }
}

variable "zone_etcd_root_password" {
  type        = string
  description = "The root password of the zone's own etcd (zone_store = etcd), set when its authentication is turned on at first boot."
  default     = null
  sensitive   = true

  validation {
    condition     = var.zone_etcd_root_password == null ? true : can(regex("^[A-Za-z0-9._~+/=-]{16,72}$", var.zone_etcd_root_password))
    error_message = "zone_etcd_root_password must be 16-72 characters from A-Z a-z 0-9 . _ ~ + / = -."
  }
}

variable "global_etcd_endpoints" {
  type        = list(string)
  description = "The global etcd members' client URLs (the global module's etcd_endpoints output)."

  validation {
    condition     = length(var.global_etcd_endpoints) > 0 && alltrue([for u in var.global_etcd_endpoints : can(regex("^https?://[0-9.]+:[0-9]+$", u))])
    error_message = "global_etcd_endpoints must be a non-empty list of http(s)://IPv4:port URLs."
  }
}

variable "global_etcd_tls" {
  type = object({
    ca_cert     = string
    client_cert = string
  })
  description = "With a global etcd over TLS: the CA of its members' certificates and this region's client certificate (client auth; no common name: etcd would take it as the user of requests without a token), which the zone control plane presents to the members, logging in as its zone's user. null: the zone control plane dials the members in plaintext (loopback only)."
  default     = null

  validation {
    condition     = var.global_etcd_tls == null ? true : alltrue([for pem in [var.global_etcd_tls.ca_cert, var.global_etcd_tls.client_cert] : startswith(trimspace(pem), "-----BEGIN CERTIFICATE-----")])
    error_message = "global_etcd_tls must hold PEM certificates."
  }
}

variable "global_etcd_client_key" {
  type        = string
  description = "The PEM private key of global_etcd_tls.client_cert."
  default     = null
  sensitive   = true

  validation {
    condition     = var.global_etcd_client_key == null ? true : can(regex("^-----BEGIN [A-Z ]*PRIVATE KEY-----", trimspace(var.global_etcd_client_key)))
    error_message = "global_etcd_client_key must be a PEM private key."
  }
}

variable "global_etcd_password" {
  type        = string
  description = "The password of this zone's user in the global etcd (meshcast-zone-<region>): the same as the global module's zone_etcd_passwords[region]."
  sensitive   = true

  validation {
    condition     = can(regex("^[A-Za-z0-9._~+/=-]{16,72}$", var.global_etcd_password))
    error_message = "global_etcd_password must be 16-72 characters from A-Z a-z 0-9 . _ ~ + / = -."
  }
}

variable "cp_tls" {
  type = object({
    ca_cert = string
    cert    = string
  })
  description = "TLS for the zone control plane's API and dataplane server: the CA clients verify it with and its certificate (SANs: zone_cp.address and 127.0.0.1). null: plaintext (loopback only)."
  default     = null

  validation {
    condition     = var.cp_tls == null ? true : alltrue([for pem in [var.cp_tls.ca_cert, var.cp_tls.cert] : startswith(trimspace(pem), "-----BEGIN CERTIFICATE-----")])
    error_message = "cp_tls must hold PEM certificates."
  }
}

variable "cp_tls_key" {
  type        = string
  description = "The PEM private key of cp_tls.cert."
  default     = null
  sensitive   = true

  validation {
    condition     = var.cp_tls_key == null ? true : can(regex("^-----BEGIN [A-Z ]*PRIVATE KEY-----", trimspace(var.cp_tls_key)))
    error_message = "cp_tls_key must be a PEM private key."
  }
}

variable "ingresses" {
  type = list(object({
    name           = string
    address        = string
    listen_address = optional(string, "0.0.0.0")
    port           = optional(number, 10001)
    admin_port     = optional(number, 9902)
  }))
  description = "The zone ingress nodes: other zones' sidecars reach this zone's services through them at address:port (TLS passthrough by SNI). The admin endpoint listens on 127.0.0.1:admin_port."
  default     = []

  validation {
    condition     = alltrue([for i in var.ingresses : can(regex("^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", i.name)) && can(cidrnetmask("${i.address}/32")) && can(cidrnetmask("${i.listen_address}/32"))])
    error_message = "Every ingress needs a DNS-label name and IPv4 addresses."
  }
  validation {
    condition     = alltrue([for i in var.ingresses : alltrue([for p in [i.port, i.admin_port] : p == floor(p) && p >= 1 && p <= 65535]) && i.port != i.admin_port])
    error_message = "Ingress ports must be distinct integers between 1 and 65535."
  }
}

variable "gateways" {
  type = list(object({
    name              = string
    address           = string
    admin_port        = optional(number, 9901)
    router_id         = optional(string)
    bgp_local_address = optional(string)
  }))
  description = "The edge gateway nodes. Each serves the MeshGateway (var.gateway) on the anycast addresses, answers /ready on 127.0.0.1:admin_port, and (with var.bgp) announces the anycast prefixes while ready. router_id defaults to the address; bgp_local_address, if set, is the source address of the BGP sessions."
  default     = []

  validation {
    condition = alltrue([for g in var.gateways : can(regex("^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", g.name)) && can(cidrnetmask("${g.address}/32")) &&
      (g.router_id == null ? true : can(cidrnetmask("${g.router_id}/32"))) &&
    (g.bgp_local_address == null ? true : can(cidrnetmask("${g.bgp_local_address}/32")))])
    error_message = "Every gateway needs a DNS-label name and IPv4 address (and router_id, bgp_local_address if set)."
  }
  validation {
    condition     = alltrue([for g in var.gateways : g.admin_port == floor(g.admin_port) && g.admin_port >= 1 && g.admin_port <= 65535])
    error_message = "Gateway admin ports must be integers between 1 and 65535."
  }
}

variable "gateway" {
  type = object({
    name           = string
    http_port      = optional(number, 80)
    https_port     = optional(number, 443)
    drain_timeout  = optional(number, 30)
    withdraw_delay = optional(number, 2)
    routes         = list(object({
      hosts       = optional(list(string), [])
      path_prefix = optional(string, "/")
      to          = string
    }))
    certificates = optional(list(object({
      name  = string
      hosts = list(string)
      cert  = string
    })), [])
  })
  description = "The MeshGateway the region's gateways serve: its name (also the gateways' service identity; their dataplane token must allow it), an http listener on each anycast address (and an https one with the certificates, chosen by SNI), the routes to mesh services in order, and the drain timings of `meshcast gateway run`. Required with gateways."
  default     = null

  validation {
    condition     = var.gateway == null ? true : can(regex("^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", var.gateway.name)) && length(var.gateway.routes) > 0
    error_message = "gateway.name must be a DNS label and gateway.routes must not be empty."
  }
  validation {
    condition = var.gateway == null ? true : (alltrue([for p in [var.gateway.http_port, var.gateway.https_port] : p == floor(p) && p >= 1 && p <= 65535]) &&
    var.gateway.http_port != var.gateway.https_port && var.gateway.drain_timeout > 0 && var.gateway.withdraw_delay >= 0)
    error_message = "gateway: ports must be distinct integers between 1 and 65535, drain_timeout positive and withdraw_delay not negative."
  }
  validation {
    condition = var.gateway == null ? true : alltrue([for r in var.gateway.routes :
    can(regex("^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", r.to)) && startswith(r.path_prefix, "/")])
    error_message = "Every gateway route needs a service name (DNS label) in `to` and a path_prefix starting with '/'."
  }
  validation {
    condition = var.gateway == null ? true : alltrue(flatten([for r in var.gateway.routes : [for h in r.hosts :
    can(regex("^(\\*|(\\*\\.)?[a-z0-9]([a-z0-9.-]*[a-z0-9])?)$", h))]]))
    error_message = "Gateway route hosts must be lowercase host names, *.domain or *."
  }
  validation {
    condition = var.gateway == null ? true : alltrue([for c in var.gateway.certificates :
    can(regex("^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", c.name)) && length(c.hosts) > 0 && startswith(trimspace(c.cert), "-----BEGIN CERTIFICATE-----")])
    error_message = "Every gateway certificate needs a DNS-label name, at least one host and a PEM certificate."
  }
}

variable "gateway_tls_keys" {
  type        = map(string)
  description = "By gateway.certificates[].name: the PEM private key of that certificate."
  default     = {}
  sensitive   = true
}

variable "anycast_addresses" {
  type        = list(string)
  description = "The region's anycast IPv4 addresses: on the gateways' loopback interface, where the MeshGateway listens. Announce them with var.bgp.prefixes (e.g. each as a /32)."
  default     = []

  validation {
    condition     = alltrue([for a in var.anycast_addresses : can(cidrnetmask("${a}/32"))])
    error_message = "anycast_addresses must be IPv4 addresses."
  }
}

variable "bgp" {
  type = object({
    local_asn        = number
    role             = optional(string, "primary")
    prefixes         = list(string)
    med              = optional(number)
    as_path_prepend  = optional(number, 0)
    communities      = optional(list(string), [])
    graceful_restart = optional(number, 0)
    peers            = list(object({
      address     = string
      asn         = number
      hold_time   = optional(number, 9)
      description = optional(string, "")
    }))
  })
  description = "The gateways' BGP speaker (docs/anycast.md): the region's AS, primary or backup, the prefixes announced while the local gateway is ready, the attributes, and the routers to peer with (every gateway peers with each). null: no speaker."
  default     = null

  validation {
    condition     = var.bgp == null ? true : (var.bgp.local_asn == floor(var.bgp.local_asn) && var.bgp.local_asn >= 1 && var.bgp.local_asn <= 4294967294 && !contains([23456, 65535], var.bgp.local_asn))
    error_message = "bgp.local_asn must be an AS number between 1 and 4294967294, not 23456 or 65535."
  }
  validation {
    condition     = var.bgp == null ? true : (contains(["primary", "backup"], var.bgp.role) && length(var.bgp.prefixes) > 0 && alltrue([for p in var.bgp.prefixes : can(cidrhost(p, 0))]))
    error_message = "bgp.role must be primary or backup, and bgp.prefixes a non-empty list of CIDR prefixes."
  }
  validation {
    condition = var.bgp == null ? true : (length(var.bgp.peers) > 0 && alltrue([for p in var.bgp.peers :
    can(cidrnetmask("${p.address}/32")) && p.asn == floor(p.asn) && p.asn >= 1 && p.asn <= 4294967294 && p.hold_time >= 3 && p.hold_time <= 65535]))
    error_message = "bgp.peers must be a non-empty list of IPv4 peers with AS numbers (1-4294967294) and hold times of 3-65535 s."
  }
  validation {
    condition     = var.bgp == null ? true : alltrue([for p in var.bgp.peers : can(regex("^[^\"\\x00-\\x1f\\x7f]{0,100}$", p.description))])
    error_message = "bgp.peers[].description must be printable, without double quotes, at most 100 characters."
  }
  validation {
    condition = var.bgp == null ? true : alltrue([for c in var.bgp.communities :
    can(regex("^([0-9]+:[0-9]+(:[0-9]+)?|no-export|no-advertise|no-export-subconfed|nopeer|blackhole)$", c))])
    error_message = "bgp.communities must be A:B, large A:B:C or a well-known name (no-export, no-advertise, no-export-subconfed, nopeer, blackhole)."
  }
  validation {
    condition = var.bgp == null ? true : (var.bgp.as_path_prepend >= 0 && var.bgp.as_path_prepend <= 10 &&
      var.bgp.graceful_restart >= 0 && var.bgp.graceful_restart <= 3600 &&
    (var.bgp.med == null ? true : var.bgp.med >= 0 && var.bgp.med <= 4294967295))
    error_message = "bgp: as_path_prepend must be 0-10, graceful_restart 0-3600 seconds, med 0-4294967295."
  }
}

variable "service_hosts" {
  type = list(object({
    name      = string
    address   = string
    instances = list(object({
      name       = string
      service    = string
      port       = number
      app_port   = number
      protocol   = optional(string, "http")
      tags       = optional(map(string), {})
      admin_port = number
      outbound   = optional(list(object({
        port    = number
        service = string
      })), [])
    }))
  }))
  description = "The hosts of service instances. For each instance: its Dataplane (name, service, the sidecar's inbound port on the host's address, the app's port on 127.0.0.1, protocol http, http2, grpc or tcp, tags, upstream services on local ports) and a meshcast-sidecar@<name> unit with its admin endpoint on 127.0.0.1:admin_port. Instance names are unique in the region; ports are 1024 or above (sidecars hold no privilege)."
  default     = []

  validation {
    condition = alltrue([for h in var.service_hosts : can(regex("^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", h.name)) && can(cidrnetmask("${h.address}/32")) && alltrue([for i in h.instances :
    can(regex("^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", i.name)) && can(regex("^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", i.service)) && contains(["http", "http2", "grpc", "tcp"], i.protocol)])])
    error_message = "Every service host needs a DNS-label name and an IPv4 address; every instance a DNS-label name and service, and a protocol among http, http2, grpc, tcp."
  }
  validation {
    condition = alltrue(flatten([for h in var.service_hosts : [for i in h.instances : [for p in concat([i.port, i.app_port, i.admin_port], [for o in i.outbound : o.port]) :
    p == floor(p) && p >= 1024 && p <= 65535]]]))
    error_message = "Instance ports (port, app_port, admin_port, outbound ports) must be integers between 1024 and 65535."
  }
  validation {
    condition     = length(distinct(flatten([for h in var.service_hosts : [for i in h.instances : i.name]]))) == length(flatten([for h in var.service_hosts : [for i in h.instances : i.name]]))
    error_message = "Instance names must be unique in the region (each is a Dataplane name)."
  }
  validation {
    condition = alltrue(flatten([for h in var.service_hosts : [for i in h.instances : [for k, v in i.tags :
    can(regex("^[A-Za-z0-9._/-]{1,63}$", k)) && can(regex("^[A-Za-z0-9._:/-]{1,253}$", v))]]]))
    error_message = "Instance tags: keys of letters, digits and ._/- (at most 63), values of letters, digits and ._:/- (1-253)."
  }
  validation {
    condition = alltrue([for h in var.service_hosts : length(distinct(flatten([for i in h.instances : concat([i.port, i.admin_port], [for o in i.outbound : o.port])]))) ==
    length(flatten([for i in h.instances : concat([i.port, i.admin_port], [for o in i.outbound : o.port])]))])
    error_message = "On one host, the instances' ports (inbound, admin, outbound) must all differ."
  }
}

variable "sidecar_drain_timeout" {
  type        = number
  description = "Seconds a sidecar lets connections in flight finish after SIGTERM (`--drain-timeout`); its unit's stop timeout is this plus 10."
  default     = 10

  validation {
    condition     = var.sidecar_drain_timeout > 0 && var.sidecar_drain_timeout <= 600
    error_message = "sidecar_drain_timeout must be between 0 (excluded) and 600 seconds."
  }
}

variable "extra_files" {
  type        = map(map(string))
  description = "map(node => map(path => content)): more files for the region's nodes (paths absolute on the node; put under root_dir like the others), e.g. a unit the provider needs. Not for secrets."
  default     = {}
}

variable "extra_units" {
  type        = map(list(string))
  description = "map(node => list(unit)): more units to enable on the region's nodes, before Meshcast's (e.g. those of extra_files)."
  default     = {}
}
