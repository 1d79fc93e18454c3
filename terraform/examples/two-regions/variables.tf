variable "organization_id" {
  type        = string
  description = "The Equinix organization the project is created in; null: your account's default organization."
  default     = null
}

variable "project_name" {
  type        = string
  description = "Name of the Equinix Metal project this example creates (with local BGP enabled)."
  default     = "meshcast"

  validation {
    condition     = length(var.project_name) > 0 && length(var.project_name) <= 80
    error_message = "project_name must be 1-80 characters."
  }
}

variable "meshcast_package" {
  type        = string
  description = "What every node pip installs Meshcast from: a requirement (`meshcast==0.1.0`) or a wheel URL."

  validation {
    condition     = length(trimspace(var.meshcast_package)) > 0
    error_message = "meshcast_package must name a pip requirement or a wheel URL."
  }
}

variable "regions" {
  type = map(object({
    metro    = string
    gateways = optional(number, 2)
  }))
  description = "The regions (Meshcast zones) by name, each in an Equinix metro, with its number of edge gateways (each peers with the metro's routers and announces the global anycast address)."
  default     = {
    eu = { metro = "am" }
    us = { metro = "da" }
  }

  validation {
    condition     = length(var.regions) > 0 && alltrue([for r in keys(var.regions) : can(regex("^[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?$", r))])
    error_message = "regions must be non-empty, named by short DNS labels (they prefix node names)."
  }
  validation {
    condition     = alltrue([for r in values(var.regions) : can(regex("^[a-z]{2}$", r.metro)) && r.gateways == floor(r.gateways) && r.gateways >= 1 && r.gateways <= 8])
    error_message = "Each region needs a two-letter metro code and 1-8 gateways."
  }
}

variable "global_region" {
  type        = string
  description = "The region whose metro hosts the global control plane's node."
  default     = "eu"
}

variable "etcd_metros" {
  type        = list(string)
  description = "One metro per global etcd member: 3 or 5, over at least three metros so that losing one keeps a quorum (the default adds ny as a tie-breaker to the two regions' metros)."
  default     = ["am", "da", "ny"]

  validation {
    condition     = contains([3, 5], length(var.etcd_metros)) && alltrue([for m in var.etcd_metros : can(regex("^[a-z]{2}$", m))])
    error_message = "etcd_metros must list 3 or 5 two-letter metro codes."
  }
}

variable "plans" {
  type = object({
    control = optional(string, "c3.small.x86")
    etcd    = optional(string, "c3.small.x86")
    gateway = optional(string, "m3.small.x86")
    apps    = optional(string, "c3.small.x86")
  })
  description = "Device plans by role: control planes and ingresses, etcd members, edge gateways, service hosts."
  default     = {}
}

variable "operating_system" {
  type        = string
  description = "Operating system of every device: the templates target Debian 12 (etcd-server 3.4, Python 3.11, systemd 252)."
  default     = "debian_12"

  validation {
    condition     = var.operating_system == "debian_12"
    error_message = "The units and packages target Debian 12 (debian_12)."
  }
}

variable "bgp_asn" {
  type        = number
  description = "The project's local BGP AS (Equinix Metal's local BGP uses the private AS 65000; its routers are AS 65530)."
  default     = 65000

  validation {
    condition     = var.bgp_asn >= 64512 && var.bgp_asn <= 65534
    error_message = "bgp_asn must be a private 16-bit AS (64512-65534)."
  }
}

variable "services" {
  type = map(object({
    port       = number
    app_port   = number
    admin_port = number
    protocol   = optional(string, "http")
    outbound   = optional(list(object({
      port    = number
      service = string
    })), [])
  }))
  description = "The services run on each region's service host (one instance per region): the sidecar's inbound port, the app's port on 127.0.0.1, the sidecar's admin port, the protocol, and upstream services on local ports. Deploy the apps themselves yourself."
  default     = {
    web     = { port = 10080, app_port = 8080, admin_port = 9910, outbound = [{ port = 20001, service = "backend" }] }
    backend = { port = 10081, app_port = 8081, admin_port = 9911 }
  }

  validation {
    condition     = length(var.services) > 0 && alltrue([for s in keys(var.services) : can(regex("^[a-z0-9]([a-z0-9-]{0,40}[a-z0-9])?$", s))])
    error_message = "services must be non-empty, named by DNS labels."
  }
}

variable "gateway_routes" {
  type = list(object({
    hosts       = optional(list(string), [])
    path_prefix = optional(string, "/")
    to          = string
  }))
  description = "The edge gateways' routes (MeshGateway `edge`), tried in order: hosts, path prefix, and the mesh service they go to."
  default     = [{ to = "web" }]

  validation {
    condition     = length(var.gateway_routes) > 0
    error_message = "gateway_routes must not be empty."
  }
}

variable "edge_certificate" {
  type = object({
    hosts = list(string)
    cert  = string
  })
  description = "A public TLS certificate (PEM, with its chain) for the gateways' https listener on 443, and the host names it serves. null: http on 80 only."
  default     = null
}

variable "edge_certificate_key" {
  type        = string
  description = "The PEM private key of edge_certificate."
  default     = null
  sensitive   = true
}
