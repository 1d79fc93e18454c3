variable "output_dir" {
  type        = string
  description = "Where every node's files are written: <output_dir>/<node>/<path on the node> (made absolute; paths inside the files point there too)."
  default     = "mesh"

  validation {
    condition     = length(trimspace(var.output_dir)) > 0 && !can(regex("\\s", var.output_dir))
    error_message = "output_dir must be a path without spaces."
  }
}

variable "meshcast_venv" {
  type        = string
  description = "The virtualenv whose bin/meshcast the systemd units name (unused when the processes are started by hand or by tests)."
  default     = "/opt/meshcast/venv"
}

variable "meshcast_package" {
  type        = string
  description = "What the nodes' cloud-init would pip install (the user_data is computed, not written, here)."
  default     = "meshcast==0.1.0"
}

variable "ports" {
  type = object({
    global_cp_api      = optional(number, 25681)
    etcd_1_client      = optional(number, 25701)
    etcd_1_peer        = optional(number, 25702)
    etcd_1_metrics     = optional(number, 25703)
    etcd_2_client      = optional(number, 25711)
    etcd_2_peer        = optional(number, 25712)
    etcd_2_metrics     = optional(number, 25713)
    etcd_3_client      = optional(number, 25721)
    etcd_3_peer        = optional(number, 25722)
    etcd_3_metrics     = optional(number, 25723)
    eu_cp_api          = optional(number, 25801)
    eu_cp_dp           = optional(number, 25802)
    eu_cp_etcd_client  = optional(number, 25803)
    eu_cp_etcd_peer    = optional(number, 25804)
    eu_cp_etcd_metrics = optional(number, 25805)
    eu_ingress         = optional(number, 25811)
    eu_ingress_admin   = optional(number, 25812)
    eu_gateway_admin   = optional(number, 25821)
    eu_gateway_http    = optional(number, 25822)
    eu_gateway_https   = optional(number, 25823)
    eu_web_1           = optional(number, 25831)
    eu_web_1_app       = optional(number, 25832)
    eu_web_1_admin     = optional(number, 25833)
    eu_web_1_backend   = optional(number, 25834)
    eu_web_1_api       = optional(number, 25835)
    eu_backend_1       = optional(number, 25841)
    eu_backend_1_app   = optional(number, 25842)
    eu_backend_1_admin = optional(number, 25843)
    us_cp_api          = optional(number, 25901)
    us_cp_dp           = optional(number, 25902)
    us_cp_etcd_client  = optional(number, 25903)
    us_cp_etcd_peer    = optional(number, 25904)
    us_cp_etcd_metrics = optional(number, 25905)
    us_ingress         = optional(number, 25911)
    us_ingress_admin   = optional(number, 25912)
    us_gateway_admin   = optional(number, 25921)
    us_gateway_http    = optional(number, 25922)
    us_gateway_https   = optional(number, 25923)
    us_backend_1       = optional(number, 25941)
    us_backend_1_app   = optional(number, 25942)
    us_backend_1_admin = optional(number, 25943)
    us_api_1           = optional(number, 25951)
    us_api_1_app       = optional(number, 25952)
    us_api_1_admin     = optional(number, 25953)
  })
  description = "Every port of the local mesh, all distinct (every listener gets its own, so the mesh also fits on 127.0.0.1 alone). Override any subset; tests/support/tftemplate.py LOCAL_PORTS holds the same defaults."
  default     = {}

  validation {
    condition     = length(distinct(values(var.ports))) == length(values(var.ports)) && alltrue([for p in values(var.ports) : p == floor(p) && p >= 1024 && p <= 65535])
    error_message = "ports must be distinct integers between 1024 and 65535."
  }
}

variable "tls_dir" {
  type        = string
  description = "null: etcd and the zone control planes in plaintext (loopback only). Otherwise a directory with the PEM files of README.md (ca.crt, etcd-N.crt/.key, global-cp-etcd-client.crt/.key, <region>-etcd-client.crt/.key, <region>-cp.crt/.key), e.g. written by tests/support/tftemplate.py make_local_tls()."
  default     = null
}

variable "etcd_root_password" {
  type        = string
  description = "Root password of the global etcd (16-72 of A-Z a-z 0-9 . _ ~ + / = -)."
  sensitive   = true
}

variable "zone_passwords" {
  type        = map(string)
  description = "By region (eu, us): the password of the zone's user in the global etcd."
  sensitive   = true
}

variable "zone_etcd_root_passwords" {
  type        = map(string)
  description = "By region (eu, us): the root password of the zone's own etcd."
  sensitive   = true
}
