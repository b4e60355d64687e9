// Command sds-client exercises Lanyard's Envoy SDS with a client built from Envoy's
// published API definitions (github.com/envoyproxy/go-control-plane), not from
// Lanyard's own protos. It is run by crates/lanyard/tests/sds_e2e.rs.
//
// Mode "attested" (the caller holds an entry): FetchSecrets (trusted_ca without the
// SPIFFE validator, NotFound for an unknown name); StreamSecrets for default, ROOTCA,
// ALL and a federated trust domain ID, with the certificate chain, key and SPIFFE ID
// checked and the chain verified against the bundle; an ACK that gets no answer; a
// rotation push; a NACK that is not retried (the next response is a new rotation);
// an unknown name left out; a stream naming only an unknown name that gets nothing;
// DeltaSecrets with an ACK and a rotation carrying only the certificate.
//
// Mode "unattested" (a caller with no entry): StreamSecrets, FetchSecrets and
// DeltaSecrets are refused with PermissionDenied.
//
// Every check prints "OK <what>"; the first failure prints "FAIL <what>" and exits 1.
package main

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	grpcstatus "google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
)

const secretType = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

var (
	socket     = flag.String("socket", "", "path of the agent's Unix socket")
	mode       = flag.String("mode", "attested", "attested | unattested")
	td         = flag.String("trust-domain", "example.org", "the agent's trust domain")
	federated  = flag.String("federated", "partner.org", "a federated trust domain")
	expectID   = flag.String("expect-id", "", "the SPIFFE ID of the default SVID")
	rotateWait = flag.Duration("rotation-timeout", 30*time.Second, "how long to wait for a rotation push")
)

func ok(format string, a ...any) { fmt.Printf("OK "+format+"\n", a...) }

func fail(format string, a ...any) {
	fmt.Printf("FAIL "+format+"\n", a...)
	os.Exit(1)
}

func check(err error, what string) {
	if err != nil {
		fail("%s: %v", what, err)
	}
}

// envoyNode is what Envoy 1.30 says about itself.
func envoyNode(disableSpiffe bool) *corev3.Node {
	n := &corev3.Node{
		Id:            "sds-e2e",
		Cluster:       "test",
		UserAgentName: "envoy",
		UserAgentVersionType: &corev3.Node_UserAgentBuildVersion{
			UserAgentBuildVersion: &corev3.BuildVersion{
				Version: &typev3.SemanticVersion{MajorNumber: 1, MinorNumber: 30},
			},
		},
	}
	if disableSpiffe {
		md, err := structpb.NewStruct(map[string]any{"disable_spiffe_cert_validation": true})
		check(err, "node metadata")
		n.Metadata = md
	}
	return n
}

func secrets(resp *discoveryv3.DiscoveryResponse) map[string]*tlsv3.Secret {
	out := map[string]*tlsv3.Secret{}
	for _, a := range resp.GetResources() {
		if a.GetTypeUrl() != secretType {
			fail("resource type %q", a.GetTypeUrl())
		}
		s := &tlsv3.Secret{}
		check(a.UnmarshalTo(s), "unmarshal Secret")
		out[s.GetName()] = s
	}
	return out
}

func names(m map[string]*tlsv3.Secret) []string {
	var n []string
	for k := range m {
		n = append(n, k)
	}
	sort.Strings(n)
	return n
}

func parseCerts(b []byte, what string) []*x509.Certificate {
	var certs []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			fail("%s: PEM block %q", what, blk.Type)
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		check(err, what)
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		fail("%s: no certificate", what)
	}
	return certs
}

// spiffeBundles reads a validation context that uses Envoy's SPIFFE validator.
func spiffeBundles(s *tlsv3.Secret) map[string][]*x509.Certificate {
	vc := s.GetValidationContext()
	if vc == nil {
		fail("%s is not a validation context", s.GetName())
	}
	ext := vc.GetCustomValidatorConfig()
	if ext == nil || ext.GetName() != "envoy.tls.cert_validator.spiffe" {
		fail("%s: no SPIFFE validator config: %v", s.GetName(), vc)
	}
	cfg := &tlsv3.SPIFFECertValidatorConfig{}
	check(ext.GetTypedConfig().UnmarshalTo(cfg), "SPIFFECertValidatorConfig")
	out := map[string][]*x509.Certificate{}
	for _, t := range cfg.GetTrustDomains() {
		out[t.GetName()] = parseCerts(t.GetTrustBundle().GetInlineBytes(), "trust bundle "+t.GetName())
	}
	return out
}

// checkSvid parses the certificate secret, checks its SPIFFE ID and key, verifies the
// chain against roots, and returns the leaf.
func checkSvid(s *tlsv3.Secret, roots []*x509.Certificate) *x509.Certificate {
	tc := s.GetTlsCertificate()
	if tc == nil {
		fail("%s is not a TLS certificate", s.GetName())
	}
	chain := parseCerts(tc.GetCertificateChain().GetInlineBytes(), "certificate chain")
	leaf := chain[0]
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != *expectID {
		fail("leaf URI SANs %v, want %s", leaf.URIs, *expectID)
	}
	blk, _ := pem.Decode(tc.GetPrivateKey().GetInlineBytes())
	if blk == nil || blk.Type != "PRIVATE KEY" {
		fail("private key is not PKCS#8 PEM")
	}
	key, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	check(err, "PKCS#8 key")
	signer, isSigner := key.(crypto.Signer)
	if !isSigner {
		fail("key is not a signer")
	}
	pub, err := x509.MarshalPKIXPublicKey(signer.Public())
	check(err, "public key")
	leafPub, err := x509.MarshalPKIXPublicKey(leaf.PublicKey)
	check(err, "leaf public key")
	if !bytes.Equal(pub, leafPub) {
		fail("the private key does not match the leaf certificate")
	}
	pool := x509.NewCertPool()
	for _, r := range roots {
		pool.AddCert(r)
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	_, err = leaf.Verify(x509.VerifyOptions{
		Roots:         pool,
		Intermediates: inter,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	})
	check(err, "chain verification against the bundle")
	return leaf
}

type recvResult struct {
	resp *discoveryv3.DiscoveryResponse
	err  error
}

// sotw wraps a StreamSecrets stream with a receiving goroutine.
type sotw struct {
	stream secretv3.SecretDiscoveryService_StreamSecretsClient
	ch     chan recvResult
}

func newSotw(ctx context.Context, c secretv3.SecretDiscoveryServiceClient) *sotw {
	st, err := c.StreamSecrets(ctx)
	check(err, "StreamSecrets")
	s := &sotw{stream: st, ch: make(chan recvResult, 8)}
	go func() {
		for {
			r, err := st.Recv()
			s.ch <- recvResult{r, err}
			if err != nil {
				return
			}
		}
	}()
	return s
}

func (s *sotw) send(req *discoveryv3.DiscoveryRequest) {
	req.TypeUrl = secretType
	check(s.stream.Send(req), "send DiscoveryRequest")
}

// next waits for a response; nil on timeout.
func (s *sotw) next(timeout time.Duration) *discoveryv3.DiscoveryResponse {
	select {
	case r := <-s.ch:
		check(r.err, "StreamSecrets receive")
		if r.resp.GetVersionInfo() == "" || r.resp.GetNonce() == "" {
			fail("response without version_info or nonce: %q %q", r.resp.GetVersionInfo(), r.resp.GetNonce())
		}
		if r.resp.GetTypeUrl() != secretType {
			fail("response type_url %q", r.resp.GetTypeUrl())
		}
		return r.resp
	case <-time.After(timeout):
		return nil
	}
}

func attested(ctx context.Context, c secretv3.SecretDiscoveryServiceClient) {
	tdID := "spiffe://" + *td
	fedID := "spiffe://" + *federated

	// FetchSecrets: a client without a build version gets trusted_ca PEM.
	resp, err := c.FetchSecrets(ctx, &discoveryv3.DiscoveryRequest{TypeUrl: secretType, ResourceNames: []string{"ROOTCA"}})
	check(err, "FetchSecrets ROOTCA")
	roots := parseCerts(secrets(resp)["ROOTCA"].GetValidationContext().GetTrustedCa().GetInlineBytes(), "ROOTCA trusted_ca")
	ok("FetchSecrets ROOTCA without a build version: trusted_ca with %d certificate(s)", len(roots))
	resp, err = c.FetchSecrets(ctx, &discoveryv3.DiscoveryRequest{
		TypeUrl: secretType, Node: envoyNode(true), ResourceNames: []string{"ROOTCA", "default"},
	})
	check(err, "FetchSecrets with disable_spiffe_cert_validation")
	m := secrets(resp)
	if m["ROOTCA"].GetValidationContext().GetTrustedCa() == nil || m["default"].GetTlsCertificate() == nil {
		fail("FetchSecrets with disable_spiffe_cert_validation: %v", names(m))
	}
	ok("FetchSecrets with node metadata disable_spiffe_cert_validation: trusted_ca, and the default SVID")
	_, err = c.FetchSecrets(ctx, &discoveryv3.DiscoveryRequest{TypeUrl: secretType, ResourceNames: []string{tdID + "/no-such-svid"}})
	if grpcstatus.Code(err) != codes.NotFound {
		fail("FetchSecrets of an unknown name: %v, want NotFound", err)
	}
	ok("FetchSecrets of an unknown name: NotFound: %s", grpcstatus.Convert(err).Message())

	// StreamSecrets as Envoy 1.30.
	want := []string{"ALL", "ROOTCA", "default", fedID}
	st := newSotw(ctx, c)
	st.send(&discoveryv3.DiscoveryRequest{Node: envoyNode(false), ResourceNames: []string{"default", "ROOTCA", "ALL", fedID}})
	first := st.next(10 * time.Second)
	if first == nil {
		fail("no first StreamSecrets response")
	}
	m = secrets(first)
	if got := names(m); strings.Join(got, ",") != strings.Join(want, ",") {
		fail("first response resources %v, want %v", got, want)
	}
	own := spiffeBundles(m["ROOTCA"])
	if len(own) != 1 || own[*td] == nil {
		fail("ROOTCA trust domains %v", own)
	}
	all := spiffeBundles(m["ALL"])
	if len(all) != 2 || all[*td] == nil || all[*federated] == nil {
		fail("ALL trust domains %v", all)
	}
	fed := spiffeBundles(m[fedID])
	if len(fed) != 1 || fed[*federated] == nil {
		fail("%s trust domains %v", fedID, fed)
	}
	leaf := checkSvid(m["default"], own[*td])
	ok("StreamSecrets first response version=%s nonce=%s: default SVID %s (key matches, chain verifies against ROOTCA), ROOTCA/ALL/%s as SPIFFE validator configs", first.GetVersionInfo(), first.GetNonce(), leaf.URIs[0], fedID)

	// ACK: no answer; the next response is a rotation.
	st.send(&discoveryv3.DiscoveryRequest{VersionInfo: first.GetVersionInfo(), ResponseNonce: first.GetNonce(), ResourceNames: []string{"default", "ROOTCA", "ALL", fedID}})
	ok("ACK sent for version %s", first.GetVersionInfo())
	rotated := st.next(*rotateWait)
	if rotated == nil {
		fail("no rotation push within %v", *rotateWait)
	}
	if rotated.GetVersionInfo() == first.GetVersionInfo() {
		fail("the ACK was answered with the same version %s", first.GetVersionInfo())
	}
	leaf2 := checkSvid(secrets(rotated)["default"], own[*td])
	if leaf2.SerialNumber.Cmp(leaf.SerialNumber) == 0 {
		fail("rotation push with the same certificate")
	}
	ok("rotation push version=%s nonce=%s: a new certificate (serial %x -> %x), valid until %s", rotated.GetVersionInfo(), rotated.GetNonce(), leaf.SerialNumber, leaf2.SerialNumber, leaf2.NotAfter.UTC().Format(time.RFC3339))

	// NACK: logged by the agent, not retried; the next response is a new version.
	st.send(&discoveryv3.DiscoveryRequest{
		VersionInfo: first.GetVersionInfo(), ResponseNonce: rotated.GetNonce(),
		ResourceNames: []string{"default", "ROOTCA", "ALL", fedID},
		ErrorDetail:   &status.Status{Code: int32(codes.InvalidArgument), Message: "sds-e2e: rejecting this update on purpose"},
	})
	ok("NACK sent for version %s", rotated.GetVersionInfo())
	after := st.next(*rotateWait)
	if after == nil {
		fail("no push after the NACK within %v", *rotateWait)
	}
	if after.GetVersionInfo() == rotated.GetVersionInfo() {
		fail("the NACKed version %s was sent again", rotated.GetVersionInfo())
	}
	leaf3 := checkSvid(secrets(after)["default"], own[*td])
	if leaf3.SerialNumber.Cmp(leaf2.SerialNumber) == 0 {
		fail("the push after the NACK carries the NACKed certificate")
	}
	ok("after the NACK, the next push is the next rotation: version=%s (not a retry)", after.GetVersionInfo())

	// An unknown name: answered at once (names changed) and left out.
	unknown := tdID + "/no-such-svid"
	st.send(&discoveryv3.DiscoveryRequest{
		VersionInfo: after.GetVersionInfo(), ResponseNonce: after.GetNonce(),
		ResourceNames: []string{"default", "ROOTCA", "ALL", fedID, unknown},
	})
	withUnknown := st.next(5 * time.Second)
	if withUnknown == nil {
		fail("no answer to a request that added a name")
	}
	m = secrets(withUnknown)
	if _, has := m[unknown]; has || len(m) != 4 {
		fail("response to a request with an unknown name: %v", names(m))
	}
	ok("a request adding the unknown name %s is answered at once without it: %v", unknown, names(m))
	check(st.stream.CloseSend(), "CloseSend")

	// A stream naming only an unknown resource gets no response.
	only := newSotw(ctx, c)
	only.send(&discoveryv3.DiscoveryRequest{Node: envoyNode(false), ResourceNames: []string{unknown}})
	if r := only.next(2 * time.Second); r != nil {
		fail("a stream for only an unknown name got a response: %v", names(secrets(r)))
	}
	ok("a stream naming only %s gets no response (Envoy's initial fetch timeout applies)", unknown)
	check(only.stream.CloseSend(), "CloseSend")

	// DeltaSecrets: initial resources, ACK, then a rotation carries only the certificate.
	ds, err := c.DeltaSecrets(ctx)
	check(err, "DeltaSecrets")
	check(ds.Send(&discoveryv3.DeltaDiscoveryRequest{
		Node: envoyNode(false), TypeUrl: secretType, ResourceNamesSubscribe: []string{"default", "ROOTCA"},
	}), "delta subscribe")
	d1, err := ds.Recv()
	check(err, "DeltaSecrets receive")
	if len(d1.GetResources()) != 2 || d1.GetNonce() == "" {
		fail("first delta response: %d resources, nonce %q", len(d1.GetResources()), d1.GetNonce())
	}
	versions := map[string]string{}
	for _, r := range d1.GetResources() {
		versions[r.GetName()] = r.GetVersion()
	}
	check(ds.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: secretType, ResponseNonce: d1.GetNonce()}), "delta ACK")
	d2, err := ds.Recv()
	check(err, "DeltaSecrets receive")
	if len(d2.GetResources()) != 1 || d2.GetResources()[0].GetName() != "default" {
		fail("delta rotation carries %d resources", len(d2.GetResources()))
	}
	if d2.GetResources()[0].GetVersion() == versions["default"] {
		fail("delta rotation with an unchanged version")
	}
	s := &tlsv3.Secret{}
	check(d2.GetResources()[0].GetResource().UnmarshalTo(s), "delta Secret")
	checkSvid(s, own[*td])
	ok("DeltaSecrets: default and ROOTCA (versions %s, %s), then a rotation carrying only default (version %s)", versions["default"], versions["ROOTCA"], d2.GetResources()[0].GetVersion())
	check(ds.CloseSend(), "CloseSend")
}

func unattested(ctx context.Context, c secretv3.SecretDiscoveryServiceClient) {
	st, err := c.StreamSecrets(ctx)
	if err == nil {
		err = st.Send(&discoveryv3.DiscoveryRequest{TypeUrl: secretType, Node: envoyNode(false), ResourceNames: []string{"default"}})
		if err == nil || errors.Is(err, io.EOF) {
			_, err = st.Recv()
		}
	}
	if grpcstatus.Code(err) != codes.PermissionDenied {
		fail("StreamSecrets as an unattested caller: %v, want PermissionDenied", err)
	}
	ok("StreamSecrets refused: PermissionDenied: %s", grpcstatus.Convert(err).Message())
	_, err = c.FetchSecrets(ctx, &discoveryv3.DiscoveryRequest{TypeUrl: secretType, ResourceNames: []string{"default"}})
	if grpcstatus.Code(err) != codes.PermissionDenied {
		fail("FetchSecrets as an unattested caller: %v, want PermissionDenied", err)
	}
	ok("FetchSecrets refused: PermissionDenied")
	ds, err := c.DeltaSecrets(ctx)
	if err == nil {
		_ = ds.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: secretType, ResourceNamesSubscribe: []string{"default"}})
		_, err = ds.Recv()
	}
	if grpcstatus.Code(err) != codes.PermissionDenied {
		fail("DeltaSecrets as an unattested caller: %v, want PermissionDenied", err)
	}
	ok("DeltaSecrets refused: PermissionDenied")
}

func main() {
	flag.Parse()
	if *socket == "" {
		fail("-socket is required")
	}
	conn, err := grpc.NewClient("unix://"+*socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	check(err, "dial")
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c := secretv3.NewSecretDiscoveryServiceClient(conn)
	// The generated client is Envoy's: make sure the message really is the upstream one.
	if proto.MessageName(&tlsv3.Secret{}) != "envoy.extensions.transport_sockets.tls.v3.Secret" {
		fail("unexpected message name %s", proto.MessageName(&tlsv3.Secret{}))
	}
	switch *mode {
	case "attested":
		if *expectID == "" {
			fail("-expect-id is required")
		}
		attested(ctx, c)
	case "unattested":
		unattested(ctx, c)
	default:
		fail("unknown -mode %q", *mode)
	}
	fmt.Println("PASS")
}
