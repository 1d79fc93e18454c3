# The region module: one region's nodes, as files per node (see the global module for the shape of the outputs).
#
# Roles (a node may hold several; its files are merged):
# - zone control plane: `meshcast zone-cp run`, with the zone's own single-member etcd beside it on 127.0.0.1
#   (zone_store = etcd); it dials the global etcd's members directly (https and this region's client certificate
#   when the global etcd has TLS);
# - zone ingresses: `meshcast ingress run`;
# - edge gateways: the anycast addresses on lo, `meshcast gateway run` serving the MeshGateway, and the BGP speaker
#   (`meshcast bgp run`: ExaBGP) announcing the region's prefixes while that gateway is ready;
# - service hosts: per service instance, its Dataplane and options files and an enabled meshcast-sidecar@<name>.
# Tokens (ingress, gateway, sidecars) are issued by the running zone control plane and delivered out of band to
# /etc/meshcast/tokens/: they are not in Terraform's state, and the units wait for them (terraform/README.md).

locals {
  templates  = "${path.module}/../../templates"
  meshcast   = "${var.meshcast_venv}/bin/meshcast"
  python     = "${var.meshcast_venv}/bin/python"
  zone       = var.region
  cp         = var.zone_cp
  etcd_store = var.zone_store == "etcd"
  global_tls = var.global_etcd_tls != null
  cp_tls     = var.cp_tls != null
  cp_url     = "${local.cp_tls ? "https" : "http"}://${local.cp.address}:${local.cp.api_port}"

  node_names = distinct(concat([local.cp.name], [for i in var.ingresses : i.name], [for g in var.gateways : g.name],
  [for h in var.service_hosts : h.name]))
  node_addresses = distinct(concat(["${local.cp.name}=${local.cp.address}"], [for i in var.ingresses : "${i.name}=${i.address}"],
  [for g in var.gateways : "${g.name}=${g.address}"], [for h in var.service_hosts : "${h.name}=${h.address}"]))
  addresses = merge({ for h in var.service_hosts : h.name => h.address }, { for g in var.gateways : g.name => g.address },
  { for i in var.ingresses : i.name => i.address }, { (local.cp.name) = local.cp.address })
  # Where each node's files go: / on a machine, <root_dir>/<node> when nodes share one machine.
  root    = { for n in local.node_names : n => var.root_dir == "" ? "" : "${var.root_dir}/${n}" }
  cp_root = local.root[local.cp.name]

  zone_etcd          = "http://127.0.0.1:${local.cp.etcd_client_port}"
  zone_etcd_peer     = "http://127.0.0.1:${local.cp.etcd_peer_port}"
  global_etcd        = join(",", var.global_etcd_endpoints)
  global_etcd_dir    = "${local.cp_root}/etc/meshcast/global-etcd"
  zone_root_password = var.zone_etcd_root_password == null ? "" : var.zone_etcd_root_password
  global_client_key  = var.global_etcd_client_key == null ? "" : var.global_etcd_client_key
  cp_key             = var.cp_tls_key == null ? "" : var.cp_tls_key
  cp_after           = local.etcd_store ? ["meshcast-etcd.service", "meshcast-etcd-bootstrap.service"] : []

  # --- the zone control plane ---------------------------------------------------------------------------------
  cp_files = merge(
    {
      "${local.cp_root}/etc/meshcast/zone-cp.yaml" = templatefile("${local.templates}/zone-cp.yaml.tftpl", {
        zone             = local.zone
        etcd_store       = local.etcd_store
        etcd_endpoints   = local.zone_etcd
        global_etcd           = local.global_etcd
        global_tls            = local.global_tls
        global_etcd_ca_file   = "${local.global_etcd_dir}/ca.crt"
        global_etcd_cert_file = "${local.global_etcd_dir}/client.crt"
        global_etcd_key_file  = "${local.global_etcd_dir}/client.key"
        global_etcd_user      = "meshcast-zone-${local.zone}"
        api_addr         = "${local.cp.listen_address}:${local.cp.api_port}"
        dp_addr          = "${local.cp.listen_address}:${local.cp.dp_port}"
        state_dir        = "${local.cp_root}/var/lib/meshcast/zone"
        tls              = local.cp_tls
        tls_cert         = "${local.cp_root}/etc/meshcast/cp/tls.crt"
        tls_key          = "${local.cp_root}/etc/meshcast/cp/tls.key"
        log_level        = var.log_level
      })
      "${local.cp_root}/etc/systemd/system/meshcast-zone-cp.service" = templatefile("${local.templates}/meshcast-zone-cp.service.tftpl", {
        zone        = local.zone
        after       = local.cp_after
        env_file    = "${local.cp_root}/etc/meshcast/zone-cp.env"
        meshcast    = local.meshcast
        config_file = "${local.cp_root}/etc/meshcast/zone-cp.yaml"
      })
    },
    local.etcd_store ? {
      "${local.cp_root}/etc/meshcast/etcd.yaml" = templatefile("${local.templates}/etcd.yaml.tftpl", {
        name                  = local.cp.name
        data_dir              = "${local.cp_root}/var/lib/meshcast/etcd"
        listen_client_urls    = local.zone_etcd
        advertise_client_urls = local.zone_etcd
        listen_peer_urls      = local.zone_etcd_peer
        advertise_peer_urls   = local.zone_etcd_peer
        initial_cluster       = "${local.cp.name}=${local.zone_etcd_peer}"
        cluster_token         = "meshcast-zone-${local.zone}"
        metrics_url           = "http://127.0.0.1:${local.cp.etcd_metrics_port}"
        heartbeat_interval    = 100
        election_timeout      = 1000
        tls                   = false
        cert_file             = ""
        key_file              = ""
        ca_file               = ""
      })
      "${local.cp_root}/etc/systemd/system/meshcast-etcd.service" = templatefile("${local.templates}/meshcast-etcd.service.tftpl", {
        description = "Meshcast zone etcd (zone ${local.zone})"
        config_file = "${local.cp_root}/etc/meshcast/etcd.yaml"
      })
      "${local.cp_root}/usr/local/lib/meshcast/etcd-bootstrap.py"           = templatefile("${local.templates}/etcd-bootstrap.py.tftpl", {})
      "${local.cp_root}/etc/systemd/system/meshcast-etcd-bootstrap.service" = templatefile("${local.templates}/meshcast-etcd-bootstrap.service.tftpl", {
        cluster    = "the zone's etcd"
        after      = ["meshcast-etcd.service"]
        env_file   = "${local.cp_root}/etc/meshcast/zone-cp.env"
        python     = local.python
        script     = "${local.cp_root}/usr/local/lib/meshcast/etcd-bootstrap.py"
        endpoints  = local.zone_etcd
        tls        = false
        ca_file    = ""
        cert_file  = ""
        key_file   = ""
        users_file = "${local.cp_root}/etc/meshcast/etcd-users.json"
      })
      # The zone's etcd has only root: its zone control plane.
      "${local.cp_root}/etc/meshcast/etcd-users.json" = "{}\n"
    } : {},
    local.global_tls ? {
      "${local.global_etcd_dir}/ca.crt"     = var.global_etcd_tls.ca_cert
      "${local.global_etcd_dir}/client.crt" = var.global_etcd_tls.client_cert
    } : {},
    local.cp_tls ? {
      "${local.cp_root}/etc/meshcast/cp/tls.crt" = var.cp_tls.cert
    } : {},
  )
  cp_secrets = merge(
    {
      "${local.cp_root}/etc/meshcast/zone-cp.env" = {
        content = templatefile("${local.templates}/env.tftpl", {
          variables = merge({ MESHCAST_GLOBAL_ETCD_PASSWORD = var.global_etcd_password },
          local.etcd_store ? { MESHCAST_ETCD_PASSWORD = local.zone_root_password } : {})
        })
        owner = "root:root", mode = "0600"
      }
    },
    local.global_tls ? {
      "${local.global_etcd_dir}/client.key" = { content = local.global_client_key, owner = "root:meshcast", mode = "0640" }
    } : {},
    local.cp_tls ? {
      "${local.cp_root}/etc/meshcast/cp/tls.key" = { content = local.cp_key, owner = "root:meshcast", mode = "0640" }
    } : {},
  )
  cp_units = concat(local.cp_after, ["meshcast-zone-cp.service"])
  # Every client of the zone control plane trusts its CA, at the same place on every node.
  cp_ca_files = {
    for n in local.node_names : n => local.cp_tls ? { "${local.root[n]}/etc/meshcast/cp/ca.crt" = var.cp_tls.ca_cert } : {}
  }

  # --- zone ingresses -----------------------------------------------------------------------------------------
  ingress_files = {
    for i in var.ingresses : i.name => {
      "${local.root[i.name]}/etc/meshcast/ingress.yaml" = templatefile("${local.templates}/ingress.yaml.tftpl", {
        cp_url         = local.cp_url
        cp_tls         = local.cp_tls
        cp_ca_file     = "${local.root[i.name]}/etc/meshcast/cp/ca.crt"
        token_file     = "${local.root[i.name]}/etc/meshcast/tokens/ingress.token"
        addr           = "${i.listen_address}:${i.port}"
        advertise_addr = "${i.address}:${i.port}"
        admin_addr     = "127.0.0.1:${i.admin_port}"
        state_dir      = "${local.root[i.name]}/var/lib/meshcast/ingress"
        log_level      = var.log_level
      })
      "${local.root[i.name]}/etc/systemd/system/meshcast-ingress.service" = templatefile("${local.templates}/meshcast-ingress.service.tftpl", {
        meshcast    = local.meshcast
        config_file = "${local.root[i.name]}/etc/meshcast/ingress.yaml"
        token_file  = "${local.root[i.name]}/etc/meshcast/tokens/ingress.token"
      })
    }
  }

  # --- edge gateways --------------------------------------------------------------------------------------------
  gw = var.gateway != null ? var.gateway : {
    name = "edge", http_port = 80, https_port = 443, drain_timeout = 30, withdraw_delay = 2, routes = [], certificates = []
  }
  https = length(local.gw.certificates) > 0
  # The MeshGateway names certificate files on the gateways' hosts; with root_dir, those of the first gateway.
  gw_tls_dir   = "${length(var.gateways) > 0 ? local.root[var.gateways[0].name] : ""}/etc/meshcast/gateway-tls"
  mesh_gateway = templatefile("${local.templates}/meshgateway.yaml.tftpl", {
    region       = local.zone
    mesh         = var.mesh
    name         = local.gw.name
    addresses    = var.anycast_addresses
    http_port    = local.gw.http_port
    https        = local.https
    https_port   = local.gw.https_port
    certificates = [for c in local.gw.certificates : {
      hosts = c.hosts, cert_file = "${local.gw_tls_dir}/${c.name}.crt", key_file = "${local.gw_tls_dir}/${c.name}.key"
    }]
    routes = [for r in local.gw.routes : { hosts = r.hosts, path_prefix = r.path_prefix, to = r.to }]
  })
  bgp_files = var.bgp == null ? {} : {
    for g in var.gateways : g.name => templatefile("${local.templates}/bgp-region.yaml.tftpl", {
      region           = local.zone
      router_id        = g.router_id != null ? g.router_id : g.address
      local_as         = var.bgp.local_asn
      role             = var.bgp.role
      prefixes         = var.bgp.prefixes
      has_med          = var.bgp.med != null
      med              = var.bgp.med != null ? var.bgp.med : 0
      communities      = var.bgp.communities
      as_path_prepend  = var.bgp.as_path_prepend
      graceful_restart = var.bgp.graceful_restart
      readiness_url    = "http://127.0.0.1:${g.admin_port}/ready"
      state_dir        = "${local.root[g.name]}/var/lib/meshcast/bgp"
      peers            = [for p in var.bgp.peers : {
        address           = p.address
        asn               = p.asn
        hold_time         = p.hold_time
        description       = p.description
        has_local_address = g.bgp_local_address != null
        local_address     = g.bgp_local_address != null ? g.bgp_local_address : ""
      }]
    })
  }
  gateway_files = {
    for g in var.gateways : g.name => merge(
      {
        "${local.root[g.name]}/etc/meshcast/gateway.yaml" = templatefile("${local.templates}/gateway.yaml.tftpl", {
          cp_url         = local.cp_url
          cp_tls         = local.cp_tls
          cp_ca_file     = "${local.root[g.name]}/etc/meshcast/cp/ca.crt"
          token_file     = "${local.root[g.name]}/etc/meshcast/tokens/gateway.token"
          dataplane_file = "${local.root[g.name]}/etc/meshcast/gateway.dataplane.yaml"
          state_dir      = "${local.root[g.name]}/var/lib/meshcast/gateway"
          admin_addr     = "127.0.0.1:${g.admin_port}"
          withdraw_delay = local.gw.withdraw_delay
          drain_timeout  = local.gw.drain_timeout
          log_level      = var.log_level
        })
        "${local.root[g.name]}/etc/meshcast/gateway.dataplane.yaml" = templatefile("${local.templates}/gateway-dataplane.yaml.tftpl", {
          mesh    = var.mesh
          name    = g.name
          address = g.address
          gateway = local.gw.name
        })
        # For reference: the global control plane applies it (the global module's `resources`).
        "${local.root[g.name]}/etc/meshcast/resources/meshgateway.yaml"     = local.mesh_gateway
        "${local.root[g.name]}/etc/systemd/system/meshcast-gateway.service" = templatefile("${local.templates}/meshcast-gateway.service.tftpl", {
          meshcast         = local.meshcast
          config_file      = "${local.root[g.name]}/etc/meshcast/gateway.yaml"
          token_file       = "${local.root[g.name]}/etc/meshcast/tokens/gateway.token"
          timeout_stop_sec = ceil(local.gw.withdraw_delay + local.gw.drain_timeout) + 15
        })
        "${local.root[g.name]}/etc/systemd/system/meshcast-anycast.service" = templatefile("${local.templates}/meshcast-anycast.service.tftpl", {
          cidrs = [for a in var.anycast_addresses : "${a}/32"]
        })
      },
      var.bgp == null ? {} : {
        "${local.root[g.name]}/etc/meshcast/bgp/${local.zone}.yaml"     = local.bgp_files[g.name]
        "${local.root[g.name]}/etc/systemd/system/meshcast-bgp.service" = templatefile("${local.templates}/meshcast-bgp.service.tftpl", {
          meshcast    = local.meshcast
          region_file = "${local.root[g.name]}/etc/meshcast/bgp/${local.zone}.yaml"
        })
      },
      { for c in local.gw.certificates : "${local.root[g.name]}/etc/meshcast/gateway-tls/${c.name}.crt" => c.cert },
    )
  }
  gateway_secrets = {
    for g in var.gateways : g.name => {
      for c in local.gw.certificates : "${local.root[g.name]}/etc/meshcast/gateway-tls/${c.name}.key" => {
        content = lookup(var.gateway_tls_keys, c.name, ""), owner = "root:meshcast", mode = "0640"
      }
    }
  }
  gateway_units = concat(["meshcast-anycast.service", "meshcast-gateway.service"], var.bgp == null ? [] : ["meshcast-bgp.service"])

  # --- service hosts --------------------------------------------------------------------------------------------
  host_files = {
    for h in var.service_hosts : h.name => merge(
      {
        "${local.root[h.name]}/etc/systemd/system/meshcast-sidecar@.service" = templatefile("${local.templates}/meshcast-sidecar@.service.tftpl", {
          meshcast         = local.meshcast
          config_dir       = "${local.root[h.name]}/etc/meshcast/dataplanes"
          token_dir        = "${local.root[h.name]}/etc/meshcast/tokens"
          timeout_stop_sec = ceil(var.sidecar_drain_timeout) + 10
        })
      },
      merge([for i in h.instances : {
        "${local.root[h.name]}/etc/meshcast/dataplanes/${i.name}.yaml" = templatefile("${local.templates}/sidecar.yaml.tftpl", {
          name           = i.name
          cp_url         = local.cp_url
          cp_tls         = local.cp_tls
          cp_ca_file     = "${local.root[h.name]}/etc/meshcast/cp/ca.crt"
          token_file     = "${local.root[h.name]}/etc/meshcast/tokens/${i.name}.token"
          dataplane_file = "${local.root[h.name]}/etc/meshcast/dataplanes/${i.name}.dataplane.yaml"
          state_dir      = "${local.root[h.name]}/var/lib/meshcast/dataplanes/${i.name}"
          admin_addr     = "127.0.0.1:${i.admin_port}"
          drain_timeout  = var.sidecar_drain_timeout
          log_level      = var.log_level
        })
        "${local.root[h.name]}/etc/meshcast/dataplanes/${i.name}.dataplane.yaml" = templatefile("${local.templates}/dataplane.yaml.tftpl", {
          mesh         = var.mesh
          name         = i.name
          address      = h.address
          inbound      = [{ port = i.port, app_port = i.app_port, service = i.service, protocol = i.protocol, tags = i.tags }]
          has_outbound = length(i.outbound) > 0
          outbound     = [for o in i.outbound : { port = o.port, service = o.service }]
        })
      }]...),
    )
  }
  host_units = { for h in var.service_hosts : h.name => [for i in h.instances : "meshcast-sidecar@${i.name}.service"] }

  # --- per node -------------------------------------------------------------------------------------------------
  files = {
    for n in local.node_names : n => merge(
      n == local.cp.name ? local.cp_files : {},
      local.cp_ca_files[n],
      lookup(local.ingress_files, n, {}),
      lookup(local.gateway_files, n, {}),
      lookup(local.host_files, n, {}),
      { for path, content in lookup(var.extra_files, n, {}) : "${local.root[n]}${path}" => content },
    )
  }
  secret_files = {
    for n in local.node_names : n => merge(
      n == local.cp.name ? local.cp_secrets : {},
      lookup(local.gateway_secrets, n, {}),
    )
  }
  units = {
    for n in local.node_names : n => concat(
      lookup(var.extra_units, n, []),
      n == local.cp.name ? local.cp_units : [],
      contains([for i in var.ingresses : i.name], n) ? ["meshcast-ingress.service"] : [],
      contains([for g in var.gateways : g.name], n) ? local.gateway_units : [],
      lookup(local.host_units, n, []),
    )
  }
  packages = {
    for n in local.node_names : n => concat(
      n == local.cp.name && local.etcd_store ? ["etcd-server"] : [],
      ["python3-venv"],
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
        [
          ["python3", "-m", "venv", var.meshcast_venv],
          ["${var.meshcast_venv}/bin/pip", "install", "--no-cache-dir", var.meshcast_package],
          ["install", "-d", "-m", "0750", "-o", "root", "-g", "meshcast", "${local.root[n]}/etc/meshcast/tokens"],
          ["systemctl", "daemon-reload"],
          concat(["systemctl", "enable", "--now"], local.units[n]),
        ],
      )
    })
  }
}
