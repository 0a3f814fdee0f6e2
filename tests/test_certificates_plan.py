"""The webhook certificates' plan (pure): first install, steady state, serving renewal, a CA change in
its three steps, and that the webhook's Secret never holds a CA key."""

from __future__ import annotations

import datetime
from collections.abc import Sequence

import pytest
from cryptography import x509

import certs
from api import constants
from certs.pki import KeyPair
from reconciler.certificates import Hosts, Issuer, Plan, Validity, certificates_in, plan

DNS = certs.webhook_dns_names("webhook-service", "security-profiles-operator")
LOCAL = Hosts.of(["127.0.0.1", "localhost"])
VALIDITY = Validity(ca=datetime.timedelta(hours=3), serving=datetime.timedelta(hours=1))
T0 = datetime.datetime.now(datetime.UTC)


@pytest.fixture(autouse=True)
def _now_is_when_the_test_starts() -> None:
    """Certificates are issued at the real time: the plans' `now` must be this test's, not the time the
    module was imported (a long session runs it minutes later)."""
    global T0  # noqa: PLW0603 - every test's plans read it
    T0 = datetime.datetime.now(datetime.UTC)


def _issue(ca: KeyPair, hosts: Hosts, lifetime: datetime.timedelta) -> KeyPair:
    return certs.issue_certificate(
        ca, "webhook", dns_names=hosts.dns_names, ip_addresses=hosts.ip_addresses, lifetime=lifetime
    )


ISSUER = Issuer(new_ca=lambda lifetime: certs.generate_ca(lifetime=lifetime), new_serving=_issue)


def step(
    before: Plan | None,
    minutes: float = 0,
    published: Sequence[bytes] | None = None,
    dns: Sequence[str] = DNS,
    validity: Validity = VALIDITY,
) -> Plan:
    ca = before.ca_secret if before else {}
    webhook = before.webhook_secret if before else {}
    now = T0 + datetime.timedelta(minutes=minutes)
    return plan(ca, webhook, published, hosts=Hosts.of(dns), now=now, issuer=ISSUER, validity=validity)


def serving_of(result: Plan) -> x509.Certificate:
    return x509.load_pem_x509_certificate(result.webhook_secret[constants.TLS_CERT_FILE])


def ca_of(result: Plan, key: str = constants.CA_CERT_FILE) -> x509.Certificate:
    return x509.load_pem_x509_certificate(result.ca_secret[key])


def signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except Exception:
        return False
    return True


def assert_no_ca_key(result: Plan) -> None:
    assert set(result.webhook_secret) == {
        constants.TLS_CERT_FILE,
        constants.TLS_KEY_FILE,
        constants.CA_CERT_FILE,
    }
    assert b"PRIVATE KEY" not in result.webhook_secret[constants.CA_CERT_FILE]


def test_first_install_makes_a_ca_and_a_serving_pair_signed_by_it() -> None:
    first = step(None)
    assert_no_ca_key(first)
    assert set(first.ca_secret) == {constants.CA_CERT_FILE, constants.CA_KEY_FILE}
    assert signed_by(serving_of(first), ca_of(first))
    assert first.bundle == first.ca_secret[constants.CA_CERT_FILE]
    assert first.webhook_secret[constants.CA_CERT_FILE] == first.bundle
    # the serving certificate is the first thing to renew, in the last third of its lifetime
    assert T0 + datetime.timedelta(minutes=35) < first.next_check < T0 + datetime.timedelta(minutes=45)


def test_steady_state_changes_nothing() -> None:
    first = step(None)
    again = step(first, minutes=10, published=[first.bundle])
    assert (again.ca_secret, again.webhook_secret) == (first.ca_secret, first.webhook_secret)


@pytest.mark.parametrize(
    ("minutes", "dns", "renewed"),
    [
        (30, DNS, False),  # two thirds of the lifetime left
        (45, DNS, True),  # in the last third
        (10, [*DNS, "other.example"], True),  # the names changed
        (10, ["127.0.0.1", "localhost"], True),  # local mode: an IP address and a name
    ],
)
def test_serving_renewal(minutes: float, dns: list[str], renewed: bool) -> None:
    first = step(None)
    later = step(first, minutes=minutes, published=[first.bundle], dns=dns)
    assert (
        later.webhook_secret[constants.TLS_CERT_FILE] != first.webhook_secret[constants.TLS_CERT_FILE]
    ) is renewed
    assert later.ca_secret == first.ca_secret
    assert signed_by(serving_of(later), ca_of(first))
    assert_no_ca_key(later)


# What is issued during the rotation starts from the real clock, not from the simulated one: a longer
# validity keeps the new material out of its own renewal while the steps move the clock on.
LONG = Validity(ca=datetime.timedelta(hours=10), serving=datetime.timedelta(hours=10))


def test_a_ca_change_never_leaves_the_served_certificate_untrusted() -> None:
    first = step(None)
    old_ca = ca_of(first)
    # 1. the CA enters its last third: a new CA joins the bundle; the old one still signs, since the
    #    published caBundles do not contain the new one yet
    rotating = step(first, minutes=125, published=[first.bundle, first.bundle], validity=LONG)
    new_ca = ca_of(rotating)
    assert new_ca != old_ca
    assert ca_of(rotating, constants.PREVIOUS_CA_CERT_FILE) == old_ca
    assert certificates_in(rotating.bundle) == [new_ca, old_ca]
    assert signed_by(serving_of(rotating), old_ca)
    assert_no_ca_key(rotating)
    # one configuration published the new bundle, the other not yet: still the old CA
    waiting = step(rotating, minutes=126, published=[rotating.bundle, first.bundle], validity=LONG)
    assert waiting.webhook_secret == rotating.webhook_secret
    assert signed_by(serving_of(waiting), old_ca)
    # 2. every configuration trusts both: the serving certificate moves to the new CA
    switched = step(waiting, minutes=127, published=[rotating.bundle, rotating.bundle], validity=LONG)
    assert signed_by(serving_of(switched), new_ca)
    assert certificates_in(switched.bundle) == [new_ca, old_ca]
    # 3. the old CA expired: it leaves the bundle and the CA Secret
    done = step(switched, minutes=200, published=[switched.bundle], validity=LONG)
    assert certificates_in(done.bundle) == [new_ca]
    assert set(done.ca_secret) == {constants.CA_CERT_FILE, constants.CA_KEY_FILE}
    assert signed_by(serving_of(done), new_ca)


def test_local_mode_names_the_ip_address() -> None:
    first = step(None, dns=["127.0.0.1", "localhost"])
    names = serving_of(first).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(names) == LOCAL.subject_alt_names()
    assert step(first, minutes=5, published=[first.bundle], dns=["127.0.0.1", "localhost"]) == first


def test_before_any_configuration_exists_the_new_ca_signs_at_once() -> None:
    first = step(None)
    rotating = step(first, minutes=125, published=None)
    assert signed_by(serving_of(rotating), ca_of(rotating))


@pytest.mark.parametrize(
    "broken",
    [
        {constants.CA_CERT_FILE: b"garbage", constants.CA_KEY_FILE: b"garbage"},
        {constants.CA_CERT_FILE: b""},
    ],
)
def test_an_unreadable_ca_secret_is_replaced(broken: dict[str, bytes]) -> None:
    result = plan(broken, {}, None, hosts=Hosts.of(DNS), now=T0, issuer=ISSUER, validity=VALIDITY)
    assert signed_by(serving_of(result), ca_of(result))


def test_a_serving_key_not_matching_its_certificate_is_reissued() -> None:
    first = step(None)
    other = step(None)
    mixed = dict(first.webhook_secret)
    mixed[constants.TLS_KEY_FILE] = other.webhook_secret[constants.TLS_KEY_FILE]
    result = plan(
        first.ca_secret, mixed, [first.bundle], hosts=Hosts.of(DNS), now=T0, issuer=ISSUER, validity=VALIDITY
    )
    assert result.webhook_secret[constants.TLS_CERT_FILE] != first.webhook_secret[constants.TLS_CERT_FILE]
