"""A federated zone's intermediate CA, with a real mesh root standing in for the global CP: first install, renewal
at two thirds of its life, and offers that are not for the pending key."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from meshcast.pki import MeshCA, build_csr, generate_workload_key, verify_chain
from zone_cp.zone_ca import PENDING_KEY, ZoneCAs

LIFE = timedelta(days=3)


def offer(root: MeshCA, csr: bytes) -> dict[str, Any]:
    """What the global CP writes for a zone's CSR."""
    certificate = root.sign_intermediate(csr, zone="eu", validity=LIFE)
    return {"certificate": certificate.decode(), "trustBundle": root.trust_bundle().decode()}


def leaf(ca: MeshCA) -> bytes:
    return ca.sign_workload_csr(build_csr(generate_workload_key(), "spiffe://default/web"), service="web",
                                mesh="default", ttl=timedelta(hours=1))


def test_an_intermediate_is_renewed_at_two_thirds_of_its_life(tmp_path: Path) -> None:
    root = MeshCA.generate("default")
    cas = ZoneCAs(tmp_path, "eu")
    assert not cas.ready("default") and not cas.renew_due("default")
    first_offer = offer(root, cas.csr("default"))
    assert cas.install("default", first_offer)
    first = cas.get("default")
    start, end = first.certificate.not_valid_before_utc, first.certificate.not_valid_after_utc
    assert not cas.renew_due("default", start + (end - start) * 0.66)
    assert cas.renew_due("default", start + (end - start) * 0.67)
    old_leaf = leaf(first)

    next_csr = cas.csr("default")  # a new pending key, while the first intermediate still signs
    assert x509.load_pem_x509_csr(next_csr).public_key() != first.certificate.public_key()
    assert cas.get("default") is first
    assert not cas.install("default", first_offer)  # still the old certificate in etcd: not for the pending key
    assert (tmp_path / "ca" / "default" / PENDING_KEY).exists()
    assert cas.install("default", offer(root, next_csr))
    second = cas.get("default")
    assert second.certificate.public_key() == x509.load_pem_x509_csr(next_csr).public_key()
    assert not (tmp_path / "ca" / "default" / PENDING_KEY).exists()
    assert not cas.renew_due("default")
    assert ZoneCAs(tmp_path, "eu").get("default").certificate == second.certificate  # saved: survives a restart
    for chain in (old_leaf, leaf(second)):  # both chain to the one root
        assert verify_chain(chain, root.trust_bundle()) == "spiffe://default/web"


def test_an_offer_is_not_installed_without_the_pending_key(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A zone whose CA files were moved aside finds its old intermediate in etcd but no key for it: it asks again
    instead of stopping (it raised FileNotFoundError), and says nothing about an offer that is simply not its own."""
    root = MeshCA.generate("default")
    earlier = ZoneCAs(tmp_path / "gone", "eu")
    stale = offer(root, earlier.csr("default"))
    cas = ZoneCAs(tmp_path, "eu")
    with caplog.at_level(logging.WARNING):
        assert not cas.install("default", stale)  # no pending key at all
        cas.csr("default")
        assert not cas.install("default", stale)  # a pending key, but another one
    assert caplog.records == []
    assert not cas.ready("default")


def test_renewal_is_due_against_the_clock_by_default(tmp_path: Path) -> None:
    late = datetime.now(UTC) - LIFE * 0.7  # signed as if 70 % of its life had passed already
    root = MeshCA.generate("default", now=late - timedelta(days=1))
    cas = ZoneCAs(tmp_path, "eu")
    csr = cas.csr("default")
    certificate = root.sign_intermediate(csr, zone="eu", validity=LIFE, now=late)
    assert cas.install("default", {"certificate": certificate.decode(), "trustBundle": root.trust_bundle().decode()})
    assert cas.renew_due("default")


def test_ca_files_that_do_not_match_are_set_aside_and_a_new_intermediate_asked_for(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A crash between the writes of a renewal can leave the new certificate beside the old key: the zone CP does not
    stop on it (it raised ValueError at every start); it moves the files aside, says so, and asks again."""
    root = MeshCA.generate("default")
    cas = ZoneCAs(tmp_path, "eu")
    assert cas.install("default", offer(root, cas.csr("default")))
    other = root.generate_intermediate(zone="eu")
    directory = tmp_path / "ca" / "default"
    (directory / "ca.crt").write_bytes(other.cert_pem)  # another intermediate's certificate beside our key

    restarted = ZoneCAs(tmp_path, "eu")
    with caplog.at_level(logging.ERROR):
        assert not restarted.ready("default")
    assert "cannot be used (CA key does not match the CA certificate)" in caplog.text
    [aside] = [d for d in directory.iterdir() if d.name.startswith("unusable-")]
    assert sorted(f.name for f in aside.iterdir()) == ["bundle.crt", "ca.crt", "ca.key"]
    assert (aside / "ca.key").stat().st_mode & 0o077 == 0
    assert restarted.install("default", offer(root, restarted.csr("default")))
    assert restarted.ready("default")
