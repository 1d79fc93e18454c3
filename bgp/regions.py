"""Every region's settings together: a change that would leave a prefix announced nowhere is refused.

A region withdraws only on its own local evidence (its gateway, its drain flag); nothing it learns about other
regions makes it withdraw. What a single region cannot see is the whole: a settings change that removes a prefix
from its last region, or leaves it only with backup regions, takes it off the Internet everywhere at once (the
1.1.1.1 outage of 2025-07-14 began with such a change). `check_coverage` compares the proposed settings of one
region with every region's current settings and names each prefix that would be left uncovered.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Sequence
from pathlib import Path

from bgp.settings import IPNetwork, RegionSettings, load_region_file
from meshcast.errors import ValidationError, Violation

SUFFIXES = (".yaml", ".yml", ".json")


def load_region_dir(directory: Path) -> list[RegionSettings]:
    """Every region file in `directory`; any invalid file, or two files for one region, is an error."""
    if not directory.is_dir():
        raise ValidationError(str(directory), [Violation("", "not a directory of region settings files")])
    regions: list[RegionSettings] = []
    seen: dict[str, str] = {}
    for path in sorted(directory.iterdir()):
        if path.suffix not in SUFFIXES or not path.is_file():
            continue
        settings = load_region_file(path)
        if settings.region in seen:
            raise ValidationError(str(path), [Violation("region", f"{settings.region!r} is also defined by "
                                                                   f"{seen[settings.region]}")])
        seen[settings.region] = str(path)
        regions.append(settings)
    return regions


def check_coverage(current: Sequence[RegionSettings], proposed: RegionSettings,
                   retire: Collection[IPNetwork] = ()) -> list[Violation]:
    """Violations (one per prefix) if, after replacing `proposed.region`'s settings with `proposed`, a prefix that
    any region announces now or would announce has no primary region left. `retire` names prefixes whose removal
    from every region is intended."""
    after = [r for r in current if r.region != proposed.region] + [proposed]
    before_by_prefix = _announcers(current)
    after_by_prefix = _announcers(after)
    retired = set(retire)
    violations = []
    for prefix in sorted(set(before_by_prefix) | set(after_by_prefix), key=_sort_key):
        if prefix in retired:
            continue
        regions = after_by_prefix.get(prefix, [])
        if not regions:
            was = ", ".join(r.region for r in before_by_prefix.get(prefix, []))
            violations.append(Violation(
                str(prefix), f"would be announced by no region (now announced by {was}): pass --retire {prefix} "
                             "if that is intended"))
        elif not any(not r.is_backup for r in regions):
            names = ", ".join(r.region for r in regions)
            violations.append(Violation(str(prefix), f"would be announced only by backup regions ({names})"))
    return violations


def _announcers(regions: Sequence[RegionSettings]) -> dict[IPNetwork, list[RegionSettings]]:
    # a region announces each listed prefix to its peers of that prefix's family only, and a valid region has at
    # least one such peer for every prefix (bgp/settings.py refuses one without): listing a prefix is announcing it
    out: dict[IPNetwork, list[RegionSettings]] = {}
    for region in regions:
        for prefix in region.prefixes:
            out.setdefault(prefix, []).append(region)
    return out


def _sort_key(prefix: IPNetwork) -> tuple[int, int, int]:
    return prefix.version, int(prefix.network_address), prefix.prefixlen


def parse_retire(values: Sequence[str]) -> list[IPNetwork]:
    out = []
    for value in values:
        try:
            out.append(ipaddress.ip_network(value))
        except ValueError:
            raise ValidationError("--retire", [Violation("", f"{value!r} is not an IP prefix")]) from None
    return out
