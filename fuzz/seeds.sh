#!/usr/bin/env bash
# Writes small seed corpora for the fuzz targets (valid and near-valid inputs), so
# the fuzzers start from real structure instead of random bytes. Uses openssl.
set -euo pipefail
cd "$(dirname "$0")"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
mkdir -p corpus/{spiffe_id,selector,bundle_json,x509_svid,jwt_svid,csr,h2_headers}

for id in spiffe://example.org spiffe://example.org/ns/prod/sa/web 'spiffe://a-b_c.d/x/y.z' \
          'spiffe://Example.org/a' 'spiffe://example.org:8080/a' 'spiffe://example.org/a/../b' \
          'spiffe://example.org/a%20' 'spiffe://u@example.org/a' 'spiffe://example.org/a?q#f'; do
  printf '%s' "$id" > "corpus/spiffe_id/$(printf '%s' "$id" | sha1sum | cut -c1-16)"
done
for sel in unix:uid:1000 unix:gid:0 unix:user:root unix:path:/usr/bin/python3 \
           unix:sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08 \
           join_token:abc x509pop:subject:cn:node; do
  printf '%s' "$sel" > "corpus/selector/$(printf '%s' "$sel" | sha1sum | cut -c1-16)"
done

# A CA and a leaf X509-SVID, as DER (single and chained).
openssl ecparam -name prime256v1 -genkey -noout -out "$tmp/ca.key" 2>/dev/null
openssl req -x509 -new -key "$tmp/ca.key" -subj /CN=ca -days 1 -out "$tmp/ca.pem" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -addext "subjectAltName=URI:spiffe://example.org" 2>/dev/null
openssl ecparam -name prime256v1 -genkey -noout -out "$tmp/leaf.key" 2>/dev/null
openssl req -new -key "$tmp/leaf.key" -subj /O=x -out "$tmp/leaf.csr" 2>/dev/null
printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=URI:spiffe://example.org/web\n' > "$tmp/ext"
openssl x509 -req -in "$tmp/leaf.csr" -CA "$tmp/ca.pem" -CAkey "$tmp/ca.key" -CAcreateserial \
  -days 1 -extfile "$tmp/ext" -out "$tmp/leaf.pem" 2>/dev/null
openssl x509 -in "$tmp/leaf.pem" -outform DER -out corpus/x509_svid/leaf.der
openssl x509 -in "$tmp/ca.pem" -outform DER -out corpus/x509_svid/ca.der
cat corpus/x509_svid/leaf.der corpus/x509_svid/ca.der > corpus/x509_svid/chain.der
cp "$tmp/leaf.pem" corpus/x509_svid/leaf.pem
openssl req -new -key "$tmp/leaf.key" -subj /CN=x -outform DER -out corpus/csr/leaf.der 2>/dev/null

# A bundle with one X.509 and one JWT authority.
x5c=$(openssl x509 -in "$tmp/ca.pem" -outform DER | base64 -w0)
cat > corpus/bundle_json/full.json <<JSON
{"keys":[{"use":"x509-svid","kty":"EC","crv":"P-256","x":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA","y":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA","x5c":["$x5c"]},
 {"use":"jwt-svid","kid":"k1","kty":"EC","crv":"P-256","x":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA","y":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"},
 {"use":"jwt-svid","kid":"r1","kty":"RSA","n":"AQAB","e":"AQAB"},
 {"use":"other","kty":"oct"}],
 "spiffe_sequence":3,"spiffe_refresh_hint":300}
JSON

# JWT-SVID shaped tokens (signature not valid; the structure is what matters).
b64() { base64 -w0 | tr '+/' '-_' | tr -d '='; }
h=$(printf '{"alg":"ES256","kid":"k1","typ":"JWT"}' | b64)
c=$(printf '{"sub":"spiffe://example.org/web","aud":["a"],"exp":1900000000,"iat":1800000000}' | b64)
printf '%s.%s.%s' "$h" "$c" "$(printf 'sig' | b64)" > corpus/jwt_svid/es256
h=$(printf '{"alg":"none"}' | b64)
printf '%s.%s.' "$h" "$c" > corpus/jwt_svid/none
# Node attestation (lanyard-nodeattest): OIDC tokens, JWKS, discovery, AWS identity
# documents and Kubernetes TokenReview responses.
mkdir -p corpus/{oidc_token,jwks,oidc_discovery,aws_iid,k8s_token_review}
iss=https://token.actions.githubusercontent.com
c=$(printf '{"iss":"%s","aud":"lanyard-server","sub":"repo:acme/api:ref:refs/heads/main","exp":1800000300,"iat":1799999990,"nbf":1799999990,"jti":"j1","repository":"acme/api","ref":"refs/heads/main","run_id":"42"}' "$iss" | b64)
for h in '{"alg":"RS256","kid":"k1","typ":"JWT"}' '{"alg":"ES256"}' '{"alg":"EdDSA","kid":"e"}' \
         '{"alg":"HS256","kid":"k1"}' '{"alg":"RS256","crit":["b64"]}' '{"alg":"PS384","kid":7}'; do
  printf '%s.%s.%s' "$(printf '%s' "$h" | b64)" "$c" "$(printf 'sig' | b64)" \
    > "corpus/oidc_token/$(printf '%s' "$h" | sha1sum | cut -c1-16)"
done
printf '%s.%s.' "$(printf '{"alg":"none"}' | b64)" "$c" > corpus/oidc_token/none
k8s=$(printf '{"aud":["lanyard-server"],"exp":1800003000,"iat":1799999400,"iss":"https://kubernetes.default.svc.cluster.local","kubernetes.io":{"namespace":"lanyard","node":{"name":"n1","uid":"5dbb7b21"},"pod":{"name":"p","uid":"79261129"},"serviceaccount":{"name":"lanyard-agent","uid":"0d5b"}},"sub":"system:serviceaccount:lanyard:lanyard-agent"}' | b64)
printf '%s.%s.%s' "$(printf '{"alg":"RS256","kid":"sa"}' | b64)" "$k8s" "$(printf 'sig' | b64)" > corpus/oidc_token/k8s_psat
openssl genrsa -out "$tmp/rsa.key" 2048 2>/dev/null
n=$(openssl rsa -in "$tmp/rsa.key" -noout -modulus 2>/dev/null | cut -d= -f2 | xxd -r -p | b64)
cat > corpus/jwks/mixed.json <<JSON
{"keys":[{"kty":"RSA","kid":"r1","use":"sig","alg":"RS256","n":"$n","e":"AQAB"},
 {"kty":"EC","kid":"e1","crv":"P-256","x":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA","y":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"},
 {"kty":"EC","kid":"e2","crv":"P-384","x":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA","y":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"},
 {"kty":"OKP","kid":"o1","crv":"Ed25519","x":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"},
 {"kty":"oct","kid":"h1","k":"c2VjcmV0"},{"kty":"RSA","kid":"enc","use":"enc","n":"$n","e":"AQAB"}]}
JSON
printf '{"keys":[]}' > corpus/jwks/empty.json
printf '{"issuer":"%s","jwks_uri":"%s/.well-known/jwks","id_token_signing_alg_values_supported":["RS256"],"claims_supported":["sub","aud"]}' "$iss" "$iss" \
  > corpus/oidc_discovery/github.json
printf '{"issuer":"%s","jwks_uri":"http://127.0.0.1:8080/jwks"}' "$iss" > corpus/oidc_discovery/loopback.json
printf '{"issuer":"https://evil.example","jwks_uri":"https://evil.example/jwks"}' > corpus/oidc_discovery/other.json
td=../crates/lanyard-nodeattest/src/aws_iid/testdata
cp "$td/document.json" corpus/aws_iid/document.json
tr -d '\n' < "$td/rsa2048.b64" | base64 -d > corpus/aws_iid/rsa2048.der
tr -d '\n' < "$td/rsa2048_stream.b64" | base64 -d > corpus/aws_iid/rsa2048_stream.der
python3 - "$td" <<'PY'
import json, sys
td = sys.argv[1]
doc = open(f"{td}/document.json").read()
p7 = open(f"{td}/rsa2048.b64").read()
sig = open(f"{td}/signature1024.b64").read().strip()
open("corpus/aws_iid/evidence_rsa2048.json", "w").write(json.dumps({"document": doc, "rsa2048": p7}))
open("corpus/aws_iid/evidence_signature.json", "w").write(json.dumps({"document": doc, "signature": sig}))
open("corpus/aws_iid/evidence_embedded.json", "w").write(json.dumps({"rsa2048": "-----BEGIN PKCS7-----\n" + p7 + "-----END PKCS7-----\n"}))
PY
cat > corpus/k8s_token_review/authenticated.json <<'JSON'
{"apiVersion":"authentication.k8s.io/v1","kind":"TokenReview","spec":{"token":"t","audiences":["lanyard-server"]},
 "status":{"authenticated":true,"user":{"username":"system:serviceaccount:lanyard:lanyard-agent","uid":"0d5b",
  "groups":["system:serviceaccounts"],"extra":{"authentication.kubernetes.io/pod-name":["p"],
  "authentication.kubernetes.io/pod-uid":["79261129"],"authentication.kubernetes.io/node-name":["n1"],
  "authentication.kubernetes.io/node-uid":["5dbb7b21"]}},"audiences":["lanyard-server"]}}
JSON
printf '{"apiVersion":"authentication.k8s.io/v1","kind":"TokenReview","status":{"authenticated":false,"error":"invalid bearer token"}}' \
  > corpus/k8s_token_review/refused.json
echo "seed corpora written to fuzz/corpus/"
