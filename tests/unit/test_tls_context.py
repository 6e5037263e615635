"""SSL contexts from pen's TLS options, without a socket: handshakes run over memory BIOs."""

import ssl

import pytest
import trustme

from pen import cli, commands
from pen import tls_contexts as tls
from pen.hooks import Offline
from pen.state import State

V = ssl.TLSVersion


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


@pytest.fixture
def pki(ca, tmp_path):
    """A CA, a certificate for localhost in one file (key included) and one split in two."""
    cert = ca.issue_cert("localhost", "127.0.0.1")
    both = tmp_path / "both.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(both))
    crt, key = tmp_path / "site.crt", tmp_path / "site.key"
    cert.cert_chain_pems[0].write_to_path(str(crt))
    cert.private_key_pem.write_to_path(str(key))
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return {"both": str(both), "crt": str(crt), "key": str(key), "ca": str(ca_file),
            "dir": tmp_path}


def state_for(*argv):
    state, _ = cli.parse([*argv, "127.0.0.1:8443", "127.0.0.1:8080"])
    return state


def handshake(server_ctx, client_ctx, name="localhost"):
    """Run a TLS handshake between two SSLObjects over memory BIOs; returns (server, client)
    objects, or raises the first side's SSLError."""
    s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=name)
    done = {"s": False, "c": False}
    for _ in range(20):
        for key, obj in (("c", client), ("s", server)):
            if not done[key]:
                try:
                    obj.do_handshake()
                    done[key] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            # TLS 1.3: the server judges the client's certificate after the client is done
            server.write(b"x")
            c_in.write(s_out.read())
            client.read(1)
            return server, client
    raise AssertionError("handshake did not finish")


def client_context(ca, alpn=None, cert=None, maximum=None):
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    if alpn:
        ctx.set_alpn_protocols(alpn)
    if cert is not None:
        cert.configure_cert(ctx)
    if maximum:
        ctx.maximum_version = maximum
    return ctx


# -L and ssl_option -------------------------------------------------------------------

def test_pens_protocol_names_map_onto_minimum_versions():
    assert tls.protocol_minimum("ssl23") == V.TLSv1_2          # today's default
    assert tls.protocol_minimum("tls1") == V.TLSv1
    assert tls.protocol_minimum("TLS1.1") == V.TLSv1_1
    assert tls.protocol_minimum("tls1.3") == V.TLSv1_3


@pytest.mark.parametrize("name", ["ssl3", "ssl2"])
def test_sslv2_and_v3_are_refused_with_a_clear_line(name, pki):
    with pytest.raises(cli.UsageError, match=rf"-L {name}: SSLv2/SSLv3 are broken and refused"):
        state_for("-E", pki["both"], "-L", name)


def test_unknown_protocol_names_the_choices():
    with pytest.raises(cli.UsageError, match="-L tls9: expected one of ssl23, tls1"):
        state_for("-L", "tls9")


@pytest.mark.parametrize(("protocol", "options", "expected"), [
    ("ssl23", [], V.TLSv1_2),
    ("ssl23", ["no_tlsv1.2"], V.TLSv1_3),
    ("tls1", ["no_tlsv1"], V.TLSv1_1),
    ("tls1", ["no_tlsv1.1"], V.TLSv1_2),       # the accepted versions stay one range
    ("tls1.2", ["no_tlsv1", "no_tlsv1.1"], V.TLSv1_2),
])
def test_ssl_option_no_tlsv_raises_the_minimum(protocol, options, expected):
    state = State()
    state.ssl_protocol = protocol
    for option in options:
        commands.execute(state, f"ssl_option {option}")
    assert tls.minimum_version(state) == expected


# the server context ------------------------------------------------------------------

def test_defaults_are_todays(pki):
    ctx = tls.server_context(state_for("-E", pki["both"]))
    assert ctx.minimum_version == V.TLSv1_2
    assert ctx.verify_mode == ssl.CERT_NONE
    assert ctx.options & ssl.OP_NO_RENEGOTIATION
    assert not ctx.options & ssl.OP_CIPHER_SERVER_PREFERENCE     # pen's default
    tls12 = {c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"}
    assert tls12 and tls12 <= set(tls.MODERN_CIPHERS.split(":"))
    assert not any("CBC" in c["description"] or "SHA1" in c["description"]
                   for c in ctx.get_ciphers())


def test_certificate_and_key_in_one_file_or_two(pki, ca):
    for argv in (["-E", pki["both"]], ["-E", pki["crt"], "-K", pki["key"]]):
        server, client = handshake(tls.server_context(state_for(*argv)), client_context(ca))
        assert client.version() == "TLSv1.3"


def test_a_missing_or_mismatched_certificate_names_the_file(pki, ca):
    with pytest.raises(tls.TlsError, match="-E: /nonexistent.pem: no such file"):
        tls.server_context(state_for("-E", "/nonexistent.pem"))
    other_key = pki["dir"] / "other.key"
    ca.issue_cert("other").private_key_pem.write_to_path(str(other_key))
    with pytest.raises(tls.TlsError, match=r"-E: .*site.crt / .*other.key: KEY_VALUES_MISMATCH"):
        tls.server_context(state_for("-E", pki["crt"], "-K", str(other_key)))


def test_key_without_certificate_is_refused(pki):
    with pytest.raises(tls.TlsError, match="TLS needs a certificate: -E cert.pem"):
        tls.Contexts(state_for("-K", pki["key"]))


def test_require_client_certificate(pki, ca):
    ctx = tls.server_context(state_for("-E", pki["both"], "-G", pki["ca"], "-R"))
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    handshake(ctx, client_context(ca, cert=ca.issue_cert("client@example")))
    with pytest.raises(ssl.SSLError, match="CERTIFICATE_REQUIRED|PEER_DID_NOT_RETURN"):
        handshake(ctx, client_context(ca))
    stranger = trustme.CA().issue_cert("client@example")
    with pytest.raises(ssl.SSLError):
        handshake(ctx, client_context(ca, cert=stranger))


def test_require_without_a_ca_is_a_usage_error(pki):
    with pytest.raises(tls.TlsError, match="-R: .*-G cafile or -A cadir"):
        tls.server_context(state_for("-E", pki["both"], "-R"))


def test_ciphers_option_and_compat(pki):
    state = state_for("-E", pki["both"], "-Z", "-O", "ssl_ciphers ECDHE-RSA-AES256-GCM-SHA384",
                      "-O", "ssl_option cipher_server_preference")
    ctx = tls.server_context(state)
    tls12 = [c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12 == ["ECDHE-RSA-AES256-GCM-SHA384"]
    assert ctx.options & ssl.OP_ALL == ssl.OP_ALL
    assert ctx.options & ssl.OP_CIPHER_SERVER_PREFERENCE
    for bad in ("NO-SUCH-CIPHER", "a\x00b", "\udc80"):
        state.ssl_ciphers = bad
        with pytest.raises(tls.TlsError, match="ssl_ciphers .*: no cipher"):
            tls.server_context(state)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_tls1_minimum_really_accepts_tls1(pki, ca):
    ctx = tls.server_context(state_for("-E", pki["both"], "-L", "tls1"))
    client = client_context(ca, maximum=V.TLSv1)
    client.minimum_version = V.TLSv1
    client.set_ciphers("DEFAULT:@SECLEVEL=0")
    _, conn = handshake(ctx, client)
    assert conn.version() == "TLSv1"
    with pytest.raises(ssl.SSLError):
        handshake(tls.server_context(state_for("-E", pki["both"])), client)


def test_alpn_http11_only_for_http(pki, ca):
    _, conn = handshake(tls.server_context(state_for("-E", pki["both"], "-H")),
                        client_context(ca, alpn=["h2", "http/1.1"]))
    assert conn.selected_alpn_protocol() == "http/1.1"
    _, conn = handshake(tls.server_context(state_for("-E", pki["both"])),
                        client_context(ca, alpn=["h2", "http/1.1"]))
    assert conn.selected_alpn_protocol() is None


def test_sni_picks_the_certificate_by_name(pki, ca, tmp_path):
    sni = tmp_path / "sni"
    sni.mkdir()
    site = ca.issue_cert("www.example.test")
    site.cert_chain_pems[0].write_to_path(str(sni / "www.example.test.crt"))
    site.private_key_pem.write_to_path(str(sni / "www.example.test.key"))
    contexts = tls.Contexts(state_for("-E", pki["both"], "-O", f"ssl_sni_path {sni}"))
    callback = contexts.server.sni_callback
    assert callback is not None
    picked = callback.context_for("WWW.Example.Test.")        # names are case-insensitive
    _, conn = handshake(picked, client_context(ca), name="www.example.test")
    assert ("DNS", "www.example.test") in conn.getpeercert()["subjectAltName"]

    class Connection:             # what OpenSSL's callback is handed: its context switches
        context = None
    conn = Connection()
    callback(conn, "www.example.test", None)
    assert conn.context is picked
    other = Connection()
    callback(other, "unknown.example.test", None)
    assert other.context is None                       # -E's certificate stays


def test_sni_names_never_become_paths(pki, tmp_path):
    callback = tls.SniCertificates(State(), str(tmp_path))
    (tmp_path / "x.crt").write_text("not a certificate")
    for name in ("../etc/passwd", "a/b", "..", "", "x" * 300, "a..b"):
        assert callback.context_for(name) is None
    assert callback.context_for("x") is None       # a broken file: -E's certificate, logged
    assert len(callback.cache) == 1


def test_sni_path_must_be_a_directory(pki):
    with pytest.raises(tls.TlsError, match="ssl_sni_path /nonexistent: not a directory"):
        tls.Contexts(state_for("-E", pki["both"], "-O", "ssl_sni_path /nonexistent"))


# backends and commands ---------------------------------------------------------------

def test_backend_context_verifies_only_with_a_ca(pki):
    ctx = tls.backend_context(state_for("-O", "ssl_backend"))
    assert ctx.verify_mode == ssl.CERT_NONE and not ctx.check_hostname
    ctx = tls.backend_context(state_for("-O", "ssl_backend", "-G", pki["ca"]))
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert tls.Contexts(state_for("-O", "ssl_backend")).server is None


def test_tls_commands_are_available():
    state = State()
    for line in ("ssl_ciphers ECDHE-RSA-AES128-GCM-SHA256", "ssl_option no_tlsv1.1",
                 "ssl_sni_path /etc/pen/sni", "ssl_client_renegotiation_interval 60",
                 "ssl_backend"):
        commands.execute(state, line)
    assert commands.execute(state, "ssl_ciphers") == "ECDHE-RSA-AES128-GCM-SHA256"
    assert commands.execute(state, "ssl_option") == "no_tlsv1.1"
    assert state.ssl_backend and state.ssl_renegotiation_interval == 60
    assert "ssl_sni_path /etc/pen/sni" in commands.dump(state)
    with pytest.raises(commands.CommandError, match="OCSP stapling is unsupported"):
        commands.execute(state, "ssl_ocsp_response /etc/pen/ocsp.der")


def test_options_map_onto_state(pki):
    state = state_for("-E", pki["crt"], "-K", pki["key"], "-G", pki["ca"], "-A", "/etc/ssl/certs",
                      "-R", "-Z", "-L", "tls1.3")
    assert (state.ssl_cert, state.ssl_key, state.ssl_ca_file, state.ssl_ca_dir) == (
        pki["crt"], pki["key"], pki["ca"], "/etc/ssl/certs")
    assert state.ssl_require_client and state.ssl_compat and state.ssl_protocol == "tls1.3"


def test_a_live_tls_command_that_cannot_be_used_is_undone(pki):
    """On a running balancer ssl_* commands rebuild the contexts at once; when that fails
    the error is the answer and the previous value stays."""
    state = state_for("-E", pki["both"])

    class Process(Offline):
        def reload_tls(self):
            try:
                tls.Contexts(state)
            except tls.TlsError as e:
                raise commands.CommandError(str(e)) from None
    state.process = Process()
    assert commands.execute(state, "ssl_ciphers ECDHE-RSA-AES128-GCM-SHA256") == ""
    assert "no cipher can be selected" in commands.answer(state, "ssl_ciphers BOGUS")
    assert state.ssl_ciphers == "ECDHE-RSA-AES128-GCM-SHA256"
    assert commands.execute(state, "ssl_option no_tlsv1.2 cipher_server_preference") == ""
    assert state.ssl_options == ["no_tlsv1.2", "cipher_server_preference"]
    assert "unknown option" in commands.answer(state, "ssl_option no_tlsv1.3")
