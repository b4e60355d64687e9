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
echo "seed corpora written to fuzz/corpus/"
