# The global module: the global control plane's node and the global etcd cluster, as files per node.
#
# Nothing here creates a machine. Each node gets a map of files (path => content) rendered from
# terraform/templates/, split in public files and secret ones (keys, passwords), the systemd units to enable, and a
# cloud-init document that writes the files and enables the units. An example turns that into machines
# (two-regions: Equinix Metal devices with the cloud-init as user data) or into a directory per node (local).
#
# etcd: members serve peers and clients on their address, with TLS both ways when etcd_tls is given. The global
# control plane and the bootstrap dial the members directly (https, with the control plane's client certificate).
# At first boot a one-shot unit on the control plane's node turns etcd authentication on (user root) and creates
# each zone's user with Meshcast's own rules (meshcast-etcd-bootstrap.service, running meshcast.store.etcd_auth).

locals {
  templates = "${path.module}/../../templates"
  tls       = var.etcd_tls != null
  scheme    = local.tls ? "https" : "http"
  meshcast  = "${var.meshcast_venv}/bin/meshcast"
  python    = "${var.meshcast_venv}/bin/python"
  cp        = var.global_cp

  members          = { for m in var.etcd_members : m.name => m }
  member_addresses = { for m in var.etcd_members : m.name => m.address }
  # A node may be both a member and the control plane's node: its files are merged.
  node_names = distinct(concat([for m in var.etcd_members : m.name], [local.cp.name]))
  addresses  = merge(local.member_addresses, { (local.cp.name) = local.cp.address })
  # Where each node's files go: / on a machine, <root_dir>/<node> when nodes share one machine.
  root    = { for n in local.node_names : n => var.root_dir == "" ? "" : "${var.root_dir}/${n}" }
  cp_root = local.root[local.cp.name]

  client_urls     = [for m in var.etcd_members : "${local.scheme}://${m.address}:${m.client_port}"]
  initial_cluster = join(",", [for m in var.etcd_members : "${m.name}=${local.scheme}://${m.address}:${m.peer_port}"])
  # What the control plane and the bootstrap dial: the members themselves (https and a client certificate with TLS).
  cp_etcd_endpoints = join(",", local.client_urls)
  cp_url            = "http://127.0.0.1:${local.cp.api_port}"
  etcd_client_dir   = "${local.cp_root}/etc/meshcast/etcd-client"
  tls_keys          = var.etcd_tls_keys == null ? { members = {}, client = "" } : var.etcd_tls_keys
  resource_files    = [for i, r in var.resources : "${local.cp_root}/etc/meshcast/resources/${format("%02d", i)}.yaml"]

  # --- etcd members -------------------------------------------------------------------------------------------
  member_files = {
    for name, m in local.members : name => merge(
      {
        "${local.root[name]}/etc/meshcast/etcd.yaml" = templatefile("${local.templates}/etcd.yaml.tftpl", {
          name                  = name
          data_dir              = "${local.root[name]}/var/lib/meshcast/etcd"
          listen_client_urls    = "${local.scheme}://${m.address}:${m.client_port}"
          advertise_client_urls = "${local.scheme}://${m.address}:${m.client_port}"
          listen_peer_urls      = "${local.scheme}://${m.address}:${m.peer_port}"
          advertise_peer_urls   = "${local.scheme}://${m.address}:${m.peer_port}"
          initial_cluster       = local.initial_cluster
          cluster_token         = var.etcd_cluster_token
          metrics_url           = "http://127.0.0.1:${m.metrics_port}"
          heartbeat_interval    = var.etcd_timers.heartbeat_ms
          election_timeout      = var.etcd_timers.election_ms
          tls                   = local.tls
          cert_file             = "${local.root[name]}/etc/meshcast/etcd/member.crt"
          key_file              = "${local.root[name]}/etc/meshcast/etcd/member.key"
          ca_file               = "${local.root[name]}/etc/meshcast/etcd/ca.crt"
        })
        "${local.root[name]}/etc/systemd/system/meshcast-etcd.service" = templatefile("${local.templates}/meshcast-etcd.service.tftpl", {
          description = "Meshcast global etcd, member ${name}"
          config_file = "${local.root[name]}/etc/meshcast/etcd.yaml"
        })
      },
      local.tls ? {
        "${local.root[name]}/etc/meshcast/etcd/ca.crt"     = var.etcd_tls.ca_cert
        "${local.root[name]}/etc/meshcast/etcd/member.crt" = lookup(var.etcd_tls.member_certs, name, "")
      } : {},
    )
  }
  member_secrets = {
    for name in keys(local.members) : name => local.tls ? {
      "${local.root[name]}/etc/meshcast/etcd/member.key" = {
        content = lookup(local.tls_keys.members, name, ""), owner = "root:etcd", mode = "0640"
      }
    } : {}
  }

  # --- the global control plane -------------------------------------------------------------------------------
  cp_files = merge(
    {
      "${local.cp_root}/etc/meshcast/global-cp.yaml" = templatefile("${local.templates}/global-cp.yaml.tftpl", {
        etcd_endpoints = local.cp_etcd_endpoints
        tls            = local.tls
        etcd_ca_file   = "${local.etcd_client_dir}/ca.crt"
        etcd_cert_file = "${local.etcd_client_dir}/client.crt"
        etcd_key_file  = "${local.etcd_client_dir}/client.key"
        api_addr       = "127.0.0.1:${local.cp.api_port}"
        state_dir      = "${local.cp_root}/var/lib/meshcast/global"
        log_level      = var.log_level
      })
      "${local.cp_root}/etc/systemd/system/meshcast-global-cp.service" = templatefile("${local.templates}/meshcast-global-cp.service.tftpl", {
        after       = ["meshcast-etcd-bootstrap.service"]
        env_file    = "${local.cp_root}/etc/meshcast/global-cp.env"
        meshcast    = local.meshcast
        config_file = "${local.cp_root}/etc/meshcast/global-cp.yaml"
      })
      "${local.cp_root}/usr/local/lib/meshcast/etcd-bootstrap.py"           = templatefile("${local.templates}/etcd-bootstrap.py.tftpl", {})
      "${local.cp_root}/etc/systemd/system/meshcast-etcd-bootstrap.service" = templatefile("${local.templates}/meshcast-etcd-bootstrap.service.tftpl", {
        cluster    = "the global etcd"
        after      = []
        env_file   = "${local.cp_root}/etc/meshcast/global-cp.env"
        python     = local.python
        script     = "${local.cp_root}/usr/local/lib/meshcast/etcd-bootstrap.py"
        endpoints  = local.cp_etcd_endpoints
        tls        = local.tls
        ca_file    = "${local.etcd_client_dir}/ca.crt"
        cert_file  = "${local.etcd_client_dir}/client.crt"
        key_file   = "${local.etcd_client_dir}/client.key"
        users_file = "${local.cp_root}/etc/meshcast/etcd-users.json"
      })
    },
    # The control plane's (and the bootstrap's) client certificate for the members: no common name, so it admits
    # the connection only and the process still logs in as its etcd user.
    local.tls ? {
      "${local.etcd_client_dir}/ca.crt"     = var.etcd_tls.ca_cert
      "${local.etcd_client_dir}/client.crt" = var.etcd_tls.client_cert
    } : {},
    length(var.resources) > 0 ? merge(
      {
        "${local.cp_root}/etc/systemd/system/meshcast-apply.service" = templatefile("${local.templates}/meshcast-apply.service.tftpl", {
          meshcast       = local.meshcast
          cp_url         = local.cp_url
          resource_files = local.resource_files
        })
      },
      { for i, doc in var.resources : local.resource_files[i] => doc },
    ) : {},
  )
  cp_secrets = merge(
    {
      "${local.cp_root}/etc/meshcast/global-cp.env" = {
        content = templatefile("${local.templates}/env.tftpl", {
          variables = { MESHCAST_ETCD_PASSWORD = var.etcd_root_password }
        })
        owner = "root:root", mode = "0600"
      }
      "${local.cp_root}/etc/meshcast/etcd-users.json" = {
        content = jsonencode(var.zone_etcd_passwords), owner = "root:meshcast", mode = "0640"
      }
    },
    local.tls ? {
      "${local.etcd_client_dir}/client.key" = {
        content = local.tls_keys.client, owner = "root:meshcast", mode = "0640"
      }
    } : {},
  )
  cp_units = concat(["meshcast-etcd-bootstrap.service", "meshcast-global-cp.service"],
  length(var.resources) > 0 ? ["meshcast-apply.service"] : [])

  # --- per node -------------------------------------------------------------------------------------------------
  files = {
    for n in local.node_names : n => merge(lookup(local.member_files, n, {}), n == local.cp.name ? local.cp_files : {})
  }
  secret_files = {
    for n in local.node_names : n => merge(lookup(local.member_secrets, n, {}), n == local.cp.name ? local.cp_secrets : {})
  }
  units = {
    for n in local.node_names : n => concat(
      contains(keys(local.members), n) ? ["meshcast-etcd.service"] : [],
      n == local.cp.name ? local.cp_units : [],
    )
  }
  packages = {
    for n in local.node_names : n => concat(
      contains(keys(local.members), n) ? ["etcd-server"] : [],
      n == local.cp.name ? ["python3-venv"] : [],
    )
  }
  user_data = {
    for n in local.node_names : n => templatefile("${local.templates}/cloud-init.yaml.tftpl", {
      hostname = n
      packages = local.packages[n]
      files    = concat(
        [for path, content in local.files[n] : { path = path, content = content, owner = "root:root", mode = "0644" }],
        [for path, f in local.secret_files[n] : { path = path, content = f.content, owner = f.owner, mode = f.mode }],
      )
      commands = concat(
        # Debian starts its own etcd (default config, same ports) when the package is installed: ours replaces it.
        contains(local.packages[n], "etcd-server") ? [
          ["systemctl", "disable", "--now", "etcd.service"], ["systemctl", "mask", "etcd.service"],
        ] : [],
        contains(local.packages[n], "python3-venv") ? [
          ["python3", "-m", "venv", var.meshcast_venv],
          ["${var.meshcast_venv}/bin/pip", "install", "--no-cache-dir", var.meshcast_package],
        ] : [],
        [["systemctl", "daemon-reload"], concat(["systemctl", "enable", "--now"], local.units[n])],
      )
    })
  }
}
