# Inputs of the global module: the global control plane's node and the etcd cluster that federates the zones.
# Addresses are IPv4. Certificates and passwords are inputs (terraform/README.md): an example generates them, the
# module only places them.

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

variable "global_cp" {
  type = object({
    name     = string
    address  = string
    api_port = optional(number, 5681)
  })
  description = "The global control plane's node: its name (a DNS label, also the key of the outputs), its address and the port of its API (served on 127.0.0.1 only: operators use SSH)."

  validation {
    condition     = can(regex("^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", var.global_cp.name))
    error_message = "global_cp.name must be a DNS label: 1-63 lowercase letters, digits and '-', not starting or ending with '-'."
  }
  validation {
    condition     = can(cidrnetmask("${var.global_cp.address}/32"))
    error_message = "global_cp.address must be an IPv4 address."
  }
  validation {
    condition     = var.global_cp.api_port == floor(var.global_cp.api_port) && var.global_cp.api_port >= 1 && var.global_cp.api_port <= 65535
    error_message = "global_cp.api_port must be an integer between 1 and 65535."
  }
}

variable "etcd_members" {
  type = list(object({
    name         = string
    address      = string
    client_port  = optional(number, 2379)
    peer_port    = optional(number, 2380)
    metrics_port = optional(number, 2381)
  }))
  description = "The global etcd cluster: 3 or 5 members, each on its own node (name: a DNS label, also the member's etcd name), spread over regions so that losing one region keeps a quorum. Clients and peers use the member's address; /metrics and /health are served on 127.0.0.1:metrics_port."

  validation {
    condition     = contains([3, 5], length(var.etcd_members))
    error_message = "etcd_members must have 3 or 5 members: an even count adds no fault tolerance, 1 has none, more than 5 slows every write."
  }
  validation {
    condition     = alltrue([for m in var.etcd_members : can(regex("^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", m.name))])
    error_message = "Every etcd member name must be a DNS label: 1-63 lowercase letters, digits and '-', not starting or ending with '-'."
  }
  validation {
    condition     = length(distinct([for m in var.etcd_members : m.name])) == length(var.etcd_members)
    error_message = "etcd member names must be unique."
  }
  validation {
    condition     = alltrue([for m in var.etcd_members : can(cidrnetmask("${m.address}/32"))])
    error_message = "Every etcd member address must be an IPv4 address."
  }
  validation {
    condition = alltrue([for m in var.etcd_members : alltrue([for p in [m.client_port, m.peer_port, m.metrics_port] :
    p == floor(p) && p >= 1 && p <= 65535]) && length(distinct([m.client_port, m.peer_port, m.metrics_port])) == 3])
    error_message = "Each member's client, peer and metrics ports must be distinct integers between 1 and 65535."
  }
  validation {
    condition = length(distinct(flatten([for m in var.etcd_members : [
      "${m.address}:${m.client_port}", "${m.address}:${m.peer_port}"]]))) == 2 * length(var.etcd_members)
    error_message = "Two etcd members cannot listen on the same address and port."
  }
}

variable "etcd_cluster_token" {
  type        = string
  description = "etcd's initial-cluster-token: unique per cluster, so that members of another cluster started with the same names cannot join this one."
  default     = "meshcast-global"

  validation {
    condition     = can(regex("^[A-Za-z0-9._-]{1,64}$", var.etcd_cluster_token))
    error_message = "etcd_cluster_token must be 1-64 letters, digits, '.', '_' or '-'."
  }
}

variable "etcd_timers" {
  type = object({
    heartbeat_ms = optional(number, 100)
    election_ms  = optional(number, 1000)
  })
  description = "etcd's raft timers in milliseconds: the heartbeat close to the longest round trip between members, the election timeout about ten times the heartbeat (etcd's tuning guide). Raise both for members in distant regions (e.g. 250 and 2500)."
  default     = {}

  validation {
    condition = (var.etcd_timers.heartbeat_ms >= 10 && var.etcd_timers.heartbeat_ms <= 5000 &&
      var.etcd_timers.election_ms >= 5 * var.etcd_timers.heartbeat_ms && var.etcd_timers.election_ms <= 50000 &&
    var.etcd_timers.heartbeat_ms == floor(var.etcd_timers.heartbeat_ms) && var.etcd_timers.election_ms == floor(var.etcd_timers.election_ms))
    error_message = "etcd_timers: heartbeat_ms must be 10-5000, election_ms at least 5 times the heartbeat and at most 50000 (whole milliseconds)."
  }
}

variable "etcd_tls" {
  type = object({
    ca_cert      = string
    member_certs = map(string)
    client_cert  = string
  })
  description = "PEM certificates for etcd over TLS: the CA that signs them all, each member's certificate by member name (SANs: the member's address; extended key usages: server and client auth, as members are clients of each other) and the global control plane's client certificate, which it and the etcd bootstrap present to the members (client auth; no common name: etcd would take it as the user of requests without a token). null: plaintext, allowed only when every node is on loopback."
  default     = null

  validation {
    # A conditional, not ||: Terraform evaluates both sides of || (no short circuit before 1.12).
    condition = var.etcd_tls == null ? true : alltrue([
      for pem in concat([var.etcd_tls.ca_cert, var.etcd_tls.client_cert], values(var.etcd_tls.member_certs)) :
      startswith(trimspace(pem), "-----BEGIN CERTIFICATE-----")
    ])
    error_message = "etcd_tls must hold PEM certificates (-----BEGIN CERTIFICATE-----)."
  }
}

variable "etcd_tls_keys" {
  type = object({
    members = map(string)
    client  = string
  })
  description = "The PEM private keys of etcd_tls's certificates: each member's by member name, and the global control plane's client key. Required with etcd_tls."
  default     = null
  sensitive   = true

  validation {
    condition = var.etcd_tls_keys == null ? true : alltrue([
      for pem in concat([var.etcd_tls_keys.client], values(var.etcd_tls_keys.members)) :
      can(regex("^-----BEGIN [A-Z ]*PRIVATE KEY-----", trimspace(pem)))
    ])
    error_message = "etcd_tls_keys must hold PEM private keys."
  }
}

variable "etcd_root_password" {
  type        = string
  description = "The password of etcd's root user, set when the cluster's authentication is turned on at first boot; the global control plane acts as root."
  sensitive   = true

  validation {
    condition     = can(regex("^[A-Za-z0-9._~+/=-]{16,72}$", var.etcd_root_password))
    error_message = "etcd_root_password must be 16-72 characters from A-Z a-z 0-9 . _ ~ + / = - (72: bcrypt's limit)."
  }
}

variable "zone_etcd_passwords" {
  type        = map(string)
  description = "By zone name: the password of that zone's etcd user (meshcast-zone-<zone>), created at first boot with the rights Meshcast gives a zone: read /meshcast/v1/, write only /meshcast/v1/zones/<zone>/. The region module of that zone gets the same password."
  sensitive   = true

  validation {
    condition     = length(var.zone_etcd_passwords) > 0
    error_message = "zone_etcd_passwords must name at least one zone."
  }
  validation {
    condition     = alltrue([for z in keys(var.zone_etcd_passwords) : can(regex("^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", z))])
    error_message = "Zone names must be DNS labels: 1-63 lowercase letters, digits and '-', not starting or ending with '-'."
  }
  validation {
    condition     = alltrue([for p in values(var.zone_etcd_passwords) : can(regex("^[A-Za-z0-9._~+/=-]{16,72}$", p))])
    error_message = "Zone passwords must be 16-72 characters from A-Z a-z 0-9 . _ ~ + / = -."
  }
}

variable "resources" {
  type        = list(string)
  description = "Meshcast resource documents (YAML) applied at the global control plane at every boot, e.g. each region module's mesh_gateway output. Meshes and policies are global too; apply the ones you manage by hand with `meshcast apply` there."
  default     = []

  validation {
    condition     = alltrue([for r in var.resources : length(trimspace(r)) > 0])
    error_message = "resources must not contain empty documents."
  }
}
