#!/usr/bin/env bash
# Behaves as a GitHub Actions runner does for a job with `permissions: id-token:
# write`: the job's environment carries ACTIONS_ID_TOKEN_REQUEST_URL and
# ACTIONS_ID_TOKEN_REQUEST_TOKEN (here served by lanyard_testkit's TestIssuer), and
# nothing else secret. The job's steps are the ones docs/attestation.md shows:
#
#   1. `lanyard agent --oneshot --write DIR`: attest with the job's OIDC token, write
#      svid.pem, svid.key, bundle.pem and a JWT-SVID, exit; `openssl verify` accepts
#      the SVID against the bundle and the key is private to the job's user;
#   2. `lanyard agent --oneshot -- CMD`: CMD (py-spiffe, unchanged) talks to a
#      Workload API socket that exists exactly as long as CMD.
#
# Run by crates/lanyard/tests/ci_runner_e2e.rs, which starts the issuer and the
# server and sets: LANYARD_BIN, LANYARD_SERVER (host:port of the agent API),
# LANYARD_TRUST_BUNDLE (PEM), EXPECTED_ID (the job's SPIFFE ID), PY_CHECK (the
# py-spiffe script), SSL_CERT_FILE (the test issuer's CA, as a runner behind a
# private CA would set it), and the two ACTIONS_ID_TOKEN_REQUEST_* variables.
set -euo pipefail
: "${LANYARD_BIN:?}" "${LANYARD_SERVER:?}" "${LANYARD_TRUST_BUNDLE:?}" "${EXPECTED_ID:?}"
: "${ACTIONS_ID_TOKEN_REQUEST_URL:?}" "${ACTIONS_ID_TOKEN_REQUEST_TOKEN:?}" "${PY_CHECK:?}"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
trust_domain=${EXPECTED_ID#spiffe://}
trust_domain=${trust_domain%%/*}
agent=("$LANYARD_BIN" agent --oneshot
  --trust-domain "$trust_domain" --server-address "$LANYARD_SERVER"
  --trust-bundle "$LANYARD_TRUST_BUNDLE"
  --jwt-from github-actions --jwt-attestation-audience lanyard-server)

echo "== step 1: lanyard agent --oneshot --write"
"${agent[@]}" --write "$work/ids" --jwt-audience https://deploy.example
openssl verify -CAfile "$work/ids/bundle.pem" "$work/ids/svid.pem"
openssl x509 -in "$work/ids/svid.pem" -noout -ext subjectAltName | grep -qF "URI:$EXPECTED_ID" \
  || { echo "svid.pem does not name $EXPECTED_ID" >&2; exit 1; }
mode=$(stat -c %a "$work/ids/svid.key")
[[ "$mode" == 600 ]] || { echo "svid.key has mode $mode, want 600" >&2; exit 1; }
openssl pkey -in "$work/ids/svid.key" -noout
python3 - "$work/ids/jwt_svid.0.token" <<'PY'
import base64, json, os, sys
payload = open(sys.argv[1]).read().strip().split(".")[1]
claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
aud = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
assert claims["sub"] == os.environ["EXPECTED_ID"], claims
assert "https://deploy.example" in aud, claims
PY
echo "step 1 ok: openssl verify accepted $EXPECTED_ID"

echo "== step 2: lanyard agent --oneshot -- python3 (py-spiffe)"
"${agent[@]}" -- python3 "$PY_CHECK"
echo "step 2 ok"
