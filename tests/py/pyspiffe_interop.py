"""Interoperability check with the Python SPIFFE client (py-spiffe, PyPI `spiffe`),
unchanged, against a running Lanyard agent. Run by crates/lanyard/tests/agent_e2e.rs
with SPIFFE_ENDPOINT_SOCKET and EXPECTED_ID set; prints one PASS/FAIL line per check
and exits non-zero on any failure."""

import os
import sys

from spiffe import JwtSource, WorkloadApiClient, X509Source

socket = os.environ["SPIFFE_ENDPOINT_SOCKET"]
expected = os.environ["EXPECTED_ID"]
trust_domain = expected.split("/")[2]
failures = 0
passes = 0


def check(name, ok, detail=""):
    global failures, passes
    print(("PASS " if ok else "FAIL ") + name + ("" if ok else ": " + str(detail)))
    if ok:
        passes += 1
    else:
        failures += 1


client = WorkloadApiClient(socket)

svid = client.fetch_x509_svid()
check("x509 svid id", str(svid.spiffe_id) == expected, svid.spiffe_id)
check("x509 svid chain", len(svid.cert_chain) >= 1, len(svid.cert_chain))
check("x509 svid key", svid.private_key is not None)

bundles = client.fetch_x509_bundles()
b = bundles.get_bundle_for_trust_domain(svid.spiffe_id.trust_domain)
check("x509 bundle present", b is not None and len(b.x509_authorities) >= 1)

ctx = client.fetch_x509_context()
check("x509 context", len(ctx.x509_svids) >= 1 and ctx.x509_bundle_set is not None)

jwt = client.fetch_jwt_svid(audience={"py-audience"})
check("jwt svid id", str(jwt.spiffe_id) == expected, jwt.spiffe_id)
check("jwt svid audience", "py-audience" in jwt.audience, jwt.audience)

jwt_bundles = client.fetch_jwt_bundles()
jb = jwt_bundles.get_bundle_for_trust_domain(svid.spiffe_id.trust_domain)
check("jwt bundle present", jb is not None and len(jb.jwt_authorities) >= 1)

validated = client.validate_jwt_svid(jwt.token, "py-audience")
check("validate jwt", str(validated.spiffe_id) == expected, validated.spiffe_id)

try:
    client.validate_jwt_svid(jwt.token, "another-audience")
    check("validate jwt wrong audience refused", False, "accepted")
except Exception as e:  # the agent answers InvalidArgument
    check("validate jwt wrong audience refused", True, e)

with X509Source(socket_path=socket) as source:
    check("X509Source", str(source.svid.spiffe_id) == expected, source.svid.spiffe_id)

with JwtSource(socket_path=socket) as source:
    j = source.fetch_svid(audience={"src-audience"})
    check("JwtSource", str(j.spiffe_id) == expected, j.spiffe_id)

client.close()
print(f"py-spiffe: {passes} checks passed, {failures} failed")
sys.exit(1 if failures else 0)
