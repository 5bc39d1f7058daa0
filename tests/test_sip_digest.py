"""SIP digest authentication (server side): the RFC vectors, parsing, and every refusal.

The client side is computed here with :mod:`hashlib` straight from RFC 7616 §3.4.1, not with
the module under test, so the two must agree independently.
"""

from __future__ import annotations

import base64
import hashlib
import struct

import pytest

from callbridge.sip.digest import (
    ALGORITHMS,
    DigestAuth,
    DigestCredentials,
    DigestParseError,
    SeenNonces,
    Verdict,
    digest_response,
    parse_auth_params,
    parse_authorization,
    response_matches,
)
from tests.stores import START, StepClock

SECRET = b"s" * 32
REALM = "sip.example.test"
USER = "sipabc123"
PASSWORD = "Zx81Qp0Lw3Ns7Vb2Gh5Jk9Mr4Tc6Yd1E"
# What Kamailio put in the digest uri: its own R-URI host:port plus ;transport=tcp.
PROXIED_URI = "sip:room42@127.0.0.1:5080;transport=tcp"

# RFC 2617 §3.5
RFC2617 = """Digest username="Mufasa",
                 realm="testrealm@host.com",
                 nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
                 uri="/dir/index.html",
                 qop=auth,
                 nc=00000001,
                 cnonce="0a4f113b",
                 response="6629fae49393a05397450978507c4ef1",
                 opaque="5ccc069c403ebaf9f0171e9517f40e41\""""
# RFC 7616 §3.9.1 (the password there is "Circle of Life", lower-case "of")
RFC7616 = (
    'Digest username="Mufasa", realm="http-auth@example.org", uri="/dir/index.html", '
    'algorithm={algorithm}, nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", '
    'nc=00000001, cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ", qop=auth, '
    'response="{response}", opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"'
)
RFC7616_RESPONSES = {
    "MD5": "8ca523f5e9506fed4657c9700eebdbec",
    "SHA-256": "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
}


def _h(algorithm: str, text: str) -> str:
    name = "md5" if algorithm.startswith("MD5") else "sha256"
    return hashlib.new(name, text.encode()).hexdigest()


def client_response(
    challenge: dict[str, str],
    *,
    method: str = "INVITE",
    uri: str = "sip:room42@sip.example.test",
    password: str = PASSWORD,
    username: str = USER,
    nc: int = 1,
    cnonce: str = "0a4f113b",
    qop: str | None = "auth",
) -> dict[str, str]:
    """What a client answers to ``challenge`` (RFC 7616 §3.4.1, written out independently)."""
    algorithm = challenge["algorithm"]
    realm, nonce = challenge["realm"], challenge["nonce"]
    ha1 = _h(algorithm, f"{username}:{realm}:{password}")
    if algorithm.endswith("-sess"):
        ha1 = _h(algorithm, f"{ha1}:{nonce}:{cnonce}")
    ha2 = _h(algorithm, f"{method}:{uri}")
    fields = {
        "username": username,
        "realm": realm,
        "nonce": nonce,
        "uri": uri,
        "algorithm": algorithm,
        "opaque": challenge["opaque"],
    }
    if qop is None:
        fields["response"] = _h(algorithm, f"{ha1}:{nonce}:{ha2}")
    else:
        count = f"{nc:08x}"
        fields.update(qop=qop, nc=count, cnonce=cnonce)
        fields["response"] = _h(algorithm, f"{ha1}:{nonce}:{count}:{cnonce}:{qop}:{ha2}")
    return fields


def header(fields: dict[str, str], scheme: str = "Digest") -> str:
    unquoted = {"algorithm", "qop", "nc"}
    return f"{scheme} " + ", ".join(
        f"{name}={value}" if name in unquoted else f'{name}="{value}"'
        for name, value in fields.items()
    )


def challenge_fields(value: str) -> dict[str, str]:
    scheme, _, rest = value.partition(" ")
    assert scheme == "Digest"
    return parse_auth_params(rest)


@pytest.fixture
def clock() -> StepClock:
    return StepClock()


@pytest.fixture
def auth(clock: StepClock) -> DigestAuth:
    return DigestAuth(SECRET, nonce_seconds=30, clock=clock)


def verify(
    auth: DigestAuth,
    fields: dict[str, str],
    *,
    method: str = "INVITE",
    password: str = PASSWORD,
    algorithm: str = "MD5",
) -> Verdict:
    credentials = parse_authorization(header(fields))
    outcome = auth.verify(
        credentials,
        method=method,
        password=password,
        realm=REALM,
        algorithm=algorithm,  # type: ignore[arg-type]
    )
    return outcome.verdict


def challenged(auth: DigestAuth, algorithm: str = "MD5") -> dict[str, str]:
    return challenge_fields(auth.challenge(REALM, algorithm))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- RFC vectors


def test_rfc2617_example_verifies() -> None:
    credentials = parse_authorization(RFC2617)
    assert credentials.uri == "/dir/index.html" and credentials.algorithm == "MD5"
    assert response_matches(credentials, method="GET", password="Circle Of Life")
    assert not response_matches(credentials, method="GET", password="Circle of Life")
    assert not response_matches(credentials, method="POST", password="Circle Of Life")
    assert (
        digest_response(
            algorithm="MD5",
            username="Mufasa",
            realm="testrealm@host.com",
            password="Circle Of Life",
            method="GET",
            uri="/dir/index.html",
            nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
            qop="auth",
            nc="00000001",
            cnonce="0a4f113b",
        )
        == "6629fae49393a05397450978507c4ef1"
    )


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256"])
def test_rfc7616_examples_verify(algorithm: str) -> None:
    value = RFC7616.format(algorithm=algorithm, response=RFC7616_RESPONSES[algorithm])
    credentials = parse_authorization(value)
    assert credentials.algorithm == algorithm
    assert response_matches(credentials, method="GET", password="Circle of Life")
    assert not response_matches(credentials, method="GET", password="Circle Of Life")


def test_rfc2069_form_without_qop() -> None:
    # RFC 2069 §2.4's inputs. The response printed there (e966c932…) does not follow from
    # them; H(H(A1):nonce:H(A2)) does, as RFC 2617 §3.2.2.1 defines it without qop.
    ha1 = hashlib.md5(b"Mufasa:testrealm@host.com:CircleOfLife").hexdigest()
    ha2 = hashlib.md5(b"GET:/dir/index.html").hexdigest()
    nonce = "dcd98b7102dd2f0e8b11d0f600bfb0c093"
    expected = hashlib.md5(f"{ha1}:{nonce}:{ha2}".encode()).hexdigest()
    assert expected == "1949323746fe6a43ef61f9606e7febea"
    credentials = DigestCredentials(
        username="Mufasa",
        realm="testrealm@host.com",
        nonce=nonce,
        uri="/dir/index.html",
        response=expected,
    )
    assert response_matches(credentials, method="GET", password="CircleOfLife")


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize("scheme", ["Digest", "digest", "DIGEST", "dIgEsT"])
def test_the_scheme_is_case_insensitive(scheme: str) -> None:
    credentials = parse_authorization(RFC2617.replace("Digest", scheme, 1))
    assert credentials.username == "Mufasa"


def test_quoted_unquoted_commas_and_escapes() -> None:
    value = (
        'Digest USERNAME="a\\"b", Realm=r, nonce="n,1", uri=sip:x@h:5070;transport=tcp,'
        'response="00ff" , qop="AUTH",nc=0000000A, cnonce="c, d", algorithm=sha-256-SESS'
    )
    credentials = parse_authorization(value)
    assert credentials.username == 'a"b'
    assert credentials.realm == "r"
    assert credentials.nonce == "n,1"
    assert credentials.uri == "sip:x@h:5070;transport=tcp"
    assert credentials.cnonce == "c, d"
    assert credentials.qop == "auth" and credentials.nc == "0000000a"
    assert credentials.algorithm == "SHA-256-sess"


def test_unknown_parameters_are_ignored_and_algorithm_defaults_to_md5() -> None:
    credentials = parse_authorization(
        'Digest username="u", realm="r", nonce="n", uri="sip:a@b", response="00", x-foo=bar'
    )
    assert credentials.algorithm == "MD5" and credentials.qop is None and credentials.nc is None


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ('Basic dXNlcjpwYXNz"', "not the Digest scheme"),
        ("Digest", "missing username, realm, nonce, uri, response"),
        ('Digest username="u", realm="r", nonce="n", uri="x"', "missing response"),
        ('Digest username="", realm="r", nonce="n", uri="x", response="0"', "missing username"),
        ('Digest username="u", username="v"', "appears twice"),
        ('Digest username="u', "unterminated"),
        ('Digest username "u"', "expected '='"),
        ('Digest username="u" realm="r"', "expected ','"),
        ('Digest ="u"', "expected a parameter name"),
        (
            'Digest username="u", realm="r", nonce="n", uri="x", response="0", qop=auth',
            "qop needs nc and cnonce",
        ),
        (
            'Digest username="u", realm="r", nonce="n", uri="x", response="0", qop=auth, '
            'nc=1, cnonce="c"',
            "nc must be 8 hexadecimal digits",
        ),
        (
            'Digest username="u", realm="r", nonce="n", uri="x", response="0", userhash=true',
            "userhash",
        ),
        ("Digest " + "x" * 9000, "longer than"),
    ],
)
def test_malformed_authorization_is_refused(value: str, problem: str) -> None:
    with pytest.raises(DigestParseError, match=problem):
        parse_authorization(value)


def test_folded_whitespace_after_the_scheme_and_nc_without_qop() -> None:
    credentials = parse_authorization(
        'Digest\t\r\n username="u", realm="r", nonce="n", uri="sip:a@b", response="00", nc=zz'
    )
    assert credentials.username == "u" and credentials.nc is None  # nc means nothing sans qop


def test_parse_errors_never_quote_the_response() -> None:
    with pytest.raises(DigestParseError) as caught:
        parse_authorization('Digest response="deadbeefcafe", username="u", username="v"')
    assert "deadbeefcafe" not in str(caught.value)


# --------------------------------------------------------------------------- challenges


def test_the_challenge_offers_md5_qop_auth_and_an_opaque(auth: DigestAuth) -> None:
    value = auth.challenge(REALM, "MD5")
    assert value.startswith("Digest ")
    assert 'qop="auth"' in value and "algorithm=MD5" in value
    fields = challenge_fields(value)
    assert fields["realm"] == REALM and fields["opaque"] and fields["nonce"]
    assert set(fields) == {"realm", "nonce", "opaque", "algorithm", "qop"}
    assert challenge_fields(auth.challenge(REALM, "SHA-256", stale=True))["stale"] == "true"
    assert challenged(auth)["nonce"] != fields["nonce"]  # a fresh nonce every time


def test_the_nonce_carries_its_issue_time_and_a_signature(
    auth: DigestAuth, clock: StepClock
) -> None:
    nonce = challenged(auth)["nonce"]
    raw = base64.urlsafe_b64decode(nonce + "=" * (-len(nonce) % 4))
    assert struct.unpack(">Q", raw[:8])[0] == int(START * 1000)
    assert auth.nonce_issued_at(nonce, REALM) == START
    assert auth.nonce_issued_at(nonce, "other.realm") is None


def test_realm_quoting() -> None:
    value = DigestAuth(SECRET).challenge('we "quote" \\ this')
    assert challenge_fields(value)["realm"] == 'we "quote" \\ this'


def test_an_unknown_algorithm_cannot_be_offered(auth: DigestAuth) -> None:
    with pytest.raises(ValueError, match="algorithm must be one of"):
        auth.challenge(REALM, "SHA-512")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- verification


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_a_right_answer_is_accepted(auth: DigestAuth, algorithm: str) -> None:
    fields = client_response(challenged(auth, algorithm))
    assert verify(auth, fields, algorithm=algorithm) is Verdict.OK


def test_the_uri_is_checked_as_sent_with_port_and_transport(auth: DigestAuth) -> None:
    challenge = challenged(auth)
    # The Request-URI the server saw may differ (no ;transport, another host:port); only the
    # digest uri as sent counts.
    assert verify(auth, client_response(challenge, uri=PROXIED_URI)) is Verdict.OK
    for sent in (
        "sip:room42@127.0.0.1:5080",
        "sip:room42@127.0.0.1;transport=tcp",
        "sip:room42@127.0.0.1:5080;transport=udp",
    ):
        fields = client_response(challenged(auth), uri=PROXIED_URI)
        fields["uri"] = sent  # computed over one uri, sent with another
        assert verify(auth, fields) is Verdict.REFUSED


def test_a_wrong_password_is_refused(auth: DigestAuth) -> None:
    fields = client_response(challenged(auth), password="not-the-password")
    assert verify(auth, fields) is Verdict.REFUSED


def test_the_method_is_part_of_the_answer(auth: DigestAuth) -> None:
    fields = client_response(challenged(auth), method="INVITE")
    assert verify(auth, fields, method="BYE") is Verdict.REFUSED


def test_a_replayed_nonce_count_is_stale_and_the_next_count_is_fine(auth: DigestAuth) -> None:
    challenge = challenged(auth)
    first = client_response(challenge, nc=1)
    assert verify(auth, first) is Verdict.OK
    assert verify(auth, first) is Verdict.STALE  # replay: right password, used (nonce, nc)
    # In-dialog requests counting nc up on the same nonce (baresip's ACK and BYE).
    assert verify(auth, client_response(challenge, method="ACK", nc=2), method="ACK") is (
        Verdict.OK
    )
    assert verify(auth, client_response(challenge, method="BYE", nc=3), method="BYE") is (
        Verdict.OK
    )
    assert verify(auth, client_response(challenge, method="BYE", nc=3), method="BYE") is (
        Verdict.STALE
    )


def test_without_qop_a_nonce_is_good_once(auth: DigestAuth) -> None:
    fields = client_response(challenged(auth), qop=None)
    assert verify(auth, fields) is Verdict.OK
    assert verify(auth, fields) is Verdict.STALE


def test_an_expired_nonce_is_stale_only_with_the_right_password(
    auth: DigestAuth, clock: StepClock
) -> None:
    challenge = challenged(auth)
    clock.advance(30.5)
    assert verify(auth, client_response(challenge)) is Verdict.STALE
    assert verify(auth, client_response(challenge, password="wrong")) is Verdict.REFUSED
    # ... and the fresh challenge that follows works.
    assert verify(auth, client_response(challenged(auth))) is Verdict.OK


def test_a_nonce_is_good_for_nonce_seconds(auth: DigestAuth, clock: StepClock) -> None:
    challenge = challenged(auth)
    clock.advance(29.9)
    assert verify(auth, client_response(challenge)) is Verdict.OK


def _with_nonce(challenge: dict[str, str], nonce: str) -> dict[str, str]:
    return {**challenge, "nonce": nonce}


def test_forged_nonces_are_refused(auth: DigestAuth) -> None:
    challenge = challenged(auth)
    nonce = challenge["nonce"]
    raw = bytearray(base64.urlsafe_b64decode(nonce + "=" * (-len(nonce) % 4)))
    later = bytearray(raw)
    later[:8] = struct.pack(">Q", int((START + 3600) * 1000))  # pushed into the future
    flipped = bytearray(raw)
    flipped[-1] ^= 1

    def encode(data: bytes) -> str:
        return base64.urlsafe_b64encode(bytes(data)).decode().rstrip("=")

    other_server = challenge_fields(DigestAuth(b"t" * 32).challenge(REALM))["nonce"]
    other_realm = challenge_fields(auth.challenge("other.example"))["nonce"]
    for forged in (
        "dcd98b7102dd2f0e8b11d0f600bfb0c093",
        encode(later),
        encode(flipped),
        other_server,
        other_realm,
        nonce[:-1],
        "!" * len(nonce),
    ):
        fields = client_response(_with_nonce(challenge, forged))
        assert verify(auth, fields) is Verdict.REFUSED, forged


def test_realm_algorithm_qop_and_opaque_must_be_the_challenged_ones(auth: DigestAuth) -> None:
    challenge = challenged(auth)
    wrong_realm = client_response({**challenge, "realm": "elsewhere"})
    assert verify(auth, wrong_realm) is Verdict.REFUSED
    # Challenged with SHA-256, answered with MD5: a downgrade.
    md5 = client_response({**challenged(auth, "SHA-256"), "algorithm": "MD5"})
    assert verify(auth, md5, algorithm="SHA-256") is Verdict.REFUSED
    auth_int = client_response(challenged(auth), qop="auth-int")
    assert verify(auth, auth_int) is Verdict.REFUSED
    altered = client_response({**challenged(auth), "opaque": "something-else"})
    assert verify(auth, altered) is Verdict.REFUSED
    without_opaque = client_response(challenged(auth))
    del without_opaque["opaque"]
    assert verify(auth, without_opaque) is Verdict.OK


def test_odd_client_values_are_refused_not_raised(auth: DigestAuth) -> None:
    fields = client_response(challenged(auth))
    fields["opaque"] = "ümlaut"
    assert verify(auth, fields) is Verdict.REFUSED
    fields = client_response(challenged(auth))
    fields["nonce"] = "ü" * 48
    assert verify(auth, fields) is Verdict.REFUSED
    built = DigestCredentials(  # not through parse_authorization: a bad nc
        username=USER,
        realm=REALM,
        nonce="n",
        uri="sip:a@b",
        response="0" * 32,
        qop="auth",
        nc="zz",
        cnonce="c",
    )
    assert auth.verify(built, method="INVITE", password=PASSWORD, realm=REALM).verdict is (
        Verdict.REFUSED
    )


def test_the_algorithm_and_hex_case_are_matched_case_insensitively(auth: DigestAuth) -> None:
    fields = client_response(challenged(auth, "SHA-256"))
    fields["algorithm"] = "sha-256"
    fields["response"] = fields["response"].upper()
    assert verify(auth, fields, algorithm="SHA-256") is Verdict.OK


def test_responses_of_the_wrong_size_are_refused(auth: DigestAuth) -> None:
    fields = client_response(challenged(auth))
    fields["response"] = fields["response"][:-2]
    assert verify(auth, fields) is Verdict.REFUSED
    fields = client_response(challenged(auth))
    fields["response"] = "z" * 32
    assert verify(auth, fields) is Verdict.REFUSED


def test_replicas_sharing_the_secret_accept_each_others_nonces(clock: StepClock) -> None:
    one = DigestAuth(SECRET, nonce_seconds=30, clock=clock)
    two = DigestAuth(SECRET, nonce_seconds=30, clock=clock)
    fields = client_response(challenged(one))
    assert verify(two, fields) is Verdict.OK
    assert verify(two, fields) is Verdict.STALE
    # The documented residual risk: replay memory is per replica.
    assert verify(one, fields) is Verdict.OK


def test_secrets_are_long_and_never_shown() -> None:
    with pytest.raises(ValueError, match="at least 16 bytes"):
        DigestAuth(b"short")
    assert "s" * 16 not in repr(DigestAuth(SECRET))


# --------------------------------------------------------------------------- replay memory


def test_seen_pairs_are_forgotten_after_their_lifetime(clock: StepClock) -> None:
    seen = SeenNonces(10, clock=clock)
    assert seen.first_use("n1", 1, START)
    assert not seen.first_use("n1", 1, START)
    assert seen.first_use("n1", 2, START) and seen.first_use("n2", None, START)
    assert len(seen) == 3
    clock.advance(10.5)
    assert seen.first_use("n3", 1, clock.now)
    assert len(seen) == 1


def test_a_full_replay_memory_fails_closed(clock: StepClock) -> None:
    seen = SeenNonces(60, max_entries=2, clock=clock)
    assert seen.first_use("old", 1, START)
    assert seen.first_use("mid", 1, START + 1)
    assert seen.first_use("new", 1, START + 2)  # "old" is forgotten ...
    assert len(seen) == 2
    assert not seen.first_use("old", 1, START)  # ... but not accepted again
    assert not seen.first_use("old", 2, START)  # nor any nonce issued that early
    assert seen.first_use("newer", 1, START + 3)


def test_credentials_repr_hides_the_response() -> None:
    credentials = parse_authorization(RFC2617)
    assert "6629fae4" not in repr(credentials)
