"""exabgp.conf for one region, rendered from its settings (pure). ExaBGP 5 syntax (`exabgp validate` accepts it).

One `neighbor` block per peer, all feeding the one `process` (our speaker), which announces and withdraws the
region's prefixes through the text API; the config itself announces nothing, so a speaker that never sees its
gateway ready never attracts traffic. A neighbor negotiates only the families of the prefixes it carries
(`RegionSettings.prefixes_for`): in a dual-stack region the IPv4 sessions carry `ipv4 unicast`, the IPv6 ones
`ipv6 unicast`.
"""

from __future__ import annotations

import shlex

from bgp.settings import RegionSettings

PROCESS = "meshcast-speaker"


def render_exabgp_conf(settings: RegionSettings) -> str:
    s = settings
    attrs = s.effective_attributes()
    source = f" from {s.source}" if s.source else ""
    lines = [
        f"# Rendered by `meshcast bgp config`{source}: region {s.region}, role {s.role}. Re-render; do not edit.",
        f"# Prefixes (announced by the speaker while the gateway at {s.readiness.url} is ready):",
        f"#   {' '.join(str(p) for p in s.prefixes)}",
        f"# Attributes: med {attrs.med if attrs.med is not None else '-'}, AS-path prepend {attrs.prepend}, "
        f"communities {' '.join(attrs.communities + attrs.large_communities) or '-'}",
        "",
        f"process {PROCESS} {{",
        f"    run {' '.join(shlex.quote(w) for w in s.speaker_command())};",
        "    encoder text;",
        "}",
    ]
    for peer in s.peers:
        families = sorted({f"ipv{p.version} unicast" for p in s.prefixes_for(peer)})
        lines += ["", f"neighbor {peer.address} {{"]
        if peer.description:
            lines.append(f'    description "{peer.description}";')
        lines.append(f"    router-id {s.router_id};")
        if peer.local_address is not None:
            lines.append(f"    local-address {peer.local_address};")
        lines += [
            f"    local-as {s.local_as};",
            f"    peer-as {peer.asn};",
            f"    hold-time {peer.hold_time};",
        ]
        if s.graceful_restart:
            # the speaker sends End-of-RIB itself once it has decided: an automatic one right after a restart would
            # make the peer flush our stale routes before the new speaker had re-announced them
            lines += ["    manual-eor true;",
                      "    capability {", f"        graceful-restart {s.graceful_restart};", "    }"]
        lines += ["    family {", *(f"        {f};" for f in families), "    }"]
        lines += ["    api {", f"        processes [ {PROCESS} ];", "        neighbor-changes;", "    }", "}"]
    return "\n".join(lines) + "\n"
