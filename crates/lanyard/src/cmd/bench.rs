//! `lanyard bench issue`: whole-system X509-SVID issuance through the agent API,
//! reported next to raw P-256 sign+verify measured in the same run.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair,
    UnparsedPublicKey,
};
use lanyard_core::{BundleSet, SpiffeId, SystemClock, TrustDomain};
use lanyard_proto::admin as apb;
use lanyard_proto::node as pb;
use lanyard_server::{Overrides, ServerConfig};
use serde_json::json;
use tokio_stream::StreamExt;

use crate::Output;

/// Options of `lanyard bench issue`.
#[derive(Debug, Clone, clap::Args)]
pub struct IssueArgs {
    /// How long each measurement runs.
    #[arg(long, default_value = "5s")]
    pub duration: String,
    /// Concurrent agent-API clients.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// CSRs per BatchNewX509Svid request.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
}

/// Raw P-256: sign and verify a 32-byte message, one thread, for `d`.
fn p256_sign_verify_per_sec(d: Duration) -> Result<f64, String> {
    let rng = SystemRandom::new();
    let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
        .map_err(|e| e.to_string())?;
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, doc.as_ref())
        .map_err(|e| e.to_string())?;
    let public =
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, key.public_key().as_ref().to_vec());
    let msg = [7u8; 32];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < d {
        for _ in 0..64 {
            let sig = key.sign(&rng, &msg).map_err(|e| e.to_string())?;
            public
                .verify(&msg, sig.as_ref())
                .map_err(|e| e.to_string())?;
            n += 1;
        }
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// A server on loopback with its data in `dir`, and an admin client on its socket.
async fn start_server(
    td: &str,
    dir: &std::path::Path,
) -> Result<
    (
        lanyard_server::RunningServer,
        apb::admin_client::AdminClient<tonic::transport::Channel>,
    ),
    String,
> {
    let config = ServerConfig::load(&Overrides {
        trust_domain: Some(td.to_string()),
        data_dir: Some(dir.to_path_buf()),
        bind: Some("127.0.0.1:0".to_string()),
        http_bind: Some("127.0.0.1:0".to_string()),
        ..Overrides::default()
    })
    .map_err(|e| e.to_string())?;
    let server = lanyard_server::start(config, Arc::new(SystemClock))
        .await
        .map_err(|e| e.to_string())?;
    let admin = apb::admin_client::AdminClient::new(
        lanyard_server::client::unix_channel(&server.admin_socket)
            .await
            .map_err(|e| e.to_string())?,
    );
    Ok((server, admin))
}

fn temp_dir() -> Result<PathBuf, String> {
    let mut raw = [0u8; 8];
    aws_lc_rs::rand::fill(&mut raw).map_err(|e| e.to_string())?;
    let name: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let dir = std::env::temp_dir().join(format!("lanyard-bench-{name}"));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    Ok(dir)
}

pub async fn issue(args: IssueArgs) -> Result<ExitCode, String> {
    let duration = lanyard_core::duration::parse_duration(&args.duration)
        .map_err(|e| format!("--duration: {e}"))?;
    if args.concurrency == 0 || args.batch == 0 || args.batch > lanyard_server::node::MAX_BATCH {
        return Err(format!(
            "--concurrency must be at least 1 and --batch between 1 and {}",
            lanyard_server::node::MAX_BATCH
        ));
    }
    eprintln!(
        "measuring raw P-256 sign+verify for {}s ...",
        duration.as_secs()
    );
    let raw = tokio::task::spawn_blocking(move || p256_sign_verify_per_sec(duration))
        .await
        .map_err(|e| e.to_string())??;

    let dir = temp_dir()?;
    let result = run_issue(&args, duration, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    let (svids, elapsed, errors) = result?;
    let per_sec = svids as f64 / elapsed.as_secs_f64();
    let ratio = per_sec / raw;
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    match args.output {
        Output::Text => {
            println!("raw P-256 sign+verify (1 thread):   {raw:>10.0} ops/s");
            println!(
                "X509-SVIDs via agent API:           {per_sec:>10.0} SVIDs/s  ({svids} in {:.1}s, {} clients x batch {}, {errors} errors)",
                elapsed.as_secs_f64(),
                args.concurrency,
                args.batch
            );
            println!(
                "ratio SVIDs/s : raw sign+verify/s:  {ratio:>10.2}  (whole system vs one thread of raw crypto)"
            );
            println!(
                "ratio per core:                     {:>10.2}  ({cores} cores, shared by server and clients)",
                ratio / cores as f64
            );
        }
        Output::Json => println!(
            "{}",
            json!({
                "raw_p256_sign_verify_per_sec": raw,
                "x509_svids_per_sec": per_sec,
                "ratio": ratio,
                "ratio_per_core": ratio / cores as f64,
                "svids": svids,
                "errors": errors,
                "seconds": elapsed.as_secs_f64(),
                "concurrency": args.concurrency,
                "batch": args.batch,
                "cores": cores,
            })
        ),
    }
    Ok(ExitCode::SUCCESS)
}

async fn run_issue(
    args: &IssueArgs,
    duration: Duration,
    dir: &std::path::Path,
) -> Result<(u64, Duration, u64), String> {
    let td = "bench.example";
    let (server, mut admin) = start_server(td, dir).await?;
    let bundle_doc = admin
        .get_bundle(apb::Empty {})
        .await
        .map_err(|e| e.to_string())?
        .into_inner()
        .jwks;
    let bundle = lanyard_core::Bundle::parse(
        TrustDomain::new(td).map_err(|e| e.to_string())?,
        bundle_doc.as_bytes(),
    )
    .map_err(|e| e.to_string())?;
    let bundles: Arc<RwLock<BundleSet>> = Arc::new(RwLock::new([bundle].into_iter().collect()));
    let server_id =
        SpiffeId::new(&format!("spiffe://{td}/lanyard/server")).map_err(|e| e.to_string())?;
    let addr = server.agent_addr.to_string();

    // Attest a bench agent with a join token.
    let token = admin
        .generate_join_token(apb::JoinTokenRequest::default())
        .await
        .map_err(|e| e.to_string())?
        .into_inner()
        .token;
    let agent_key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let csr = |k: &rcgen::KeyPair| -> Result<Vec<u8>, String> {
        Ok(rcgen::CertificateParams::default()
            .serialize_request(k)
            .map_err(|e| e.to_string())?
            .der()
            .to_vec())
    };
    let mut anon = pb::node_client::NodeClient::new(
        lanyard_server::client::tls_channel(&addr, bundles.clone(), server_id.clone(), None)
            .await
            .map_err(|e| e.to_string())?,
    );
    let req = pb::AttestRequest {
        step: Some(pb::attest_request::Step::JoinToken(
            pb::JoinTokenAttestation {
                token,
                csr: csr(&agent_key)?,
            },
        )),
    };
    let mut stream = anon
        .attest(tokio_stream::iter(vec![req]))
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    let svid = match stream.next().await {
        Some(Ok(pb::AttestResponse {
            step: Some(pb::attest_response::Step::Result(s)),
        })) => s,
        other => return Err(format!("bench agent attestation failed: {other:?}")),
    };
    let agent_pkcs8 = agent_key.serialize_der();

    // Entries for the agent, and a pool of CSRs (client key generation is not timed).
    let mut entry_ids = Vec::new();
    for i in 0..8 {
        let e = admin
            .create_entry(apb::Entry {
                spiffe_id: format!("spiffe://{td}/bench/w{i}"),
                parent_id: svid.spiffe_id.clone(),
                selectors: vec![format!("unix:uid:{}", 1000 + i)],
                owner: "bench".to_string(),
                environment: "bench".to_string(),
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?
            .into_inner();
        entry_ids.push(e.id);
    }
    let mut csrs = Vec::new();
    for _ in 0..64 {
        csrs.push(csr(&rcgen::KeyPair::generate().map_err(|e| e.to_string())?)?);
    }
    let csrs = Arc::new(csrs);
    let entry_ids = Arc::new(entry_ids);

    let mut clients = Vec::new();
    for _ in 0..args.concurrency {
        clients.push(pb::node_client::NodeClient::new(
            lanyard_server::client::tls_channel(
                &addr,
                bundles.clone(),
                server_id.clone(),
                Some((&svid.cert_chain, &agent_pkcs8)),
            )
            .await
            .map_err(|e| e.to_string())?,
        ));
    }
    eprintln!(
        "issuing X509-SVIDs through the agent API for {}s ...",
        duration.as_secs()
    );
    let start = Instant::now();
    let deadline = start + duration;
    let mut handles = Vec::new();
    for (c, mut client) in clients.into_iter().enumerate() {
        let csrs = csrs.clone();
        let entry_ids = entry_ids.clone();
        let batch = args.batch;
        handles.push(tokio::spawn(async move {
            let (mut ok, mut errors, mut i) = (0u64, 0u64, c);
            while Instant::now() < deadline {
                let requests = (0..batch)
                    .map(|k| pb::X509SvidRequest {
                        entry_id: entry_ids[(i + k) % entry_ids.len()].clone(),
                        csr: csrs[(i + k) % csrs.len()].clone(),
                    })
                    .collect();
                i += batch;
                match client
                    .batch_new_x509_svid(pb::BatchX509SvidRequest { requests })
                    .await
                {
                    Ok(r) => {
                        for res in r.into_inner().results {
                            if res.error.is_empty() {
                                ok += 1
                            } else {
                                errors += 1
                            }
                        }
                    }
                    Err(_) => errors += batch as u64,
                }
            }
            (ok, errors)
        }));
    }
    let (mut total, mut errors) = (0u64, 0u64);
    for h in handles {
        let (o, e) = h.await.map_err(|e| e.to_string())?;
        total += o;
        errors += e;
    }
    let elapsed = start.elapsed();
    server.shutdown().await.map_err(|e| e.to_string())?;
    Ok((total, elapsed, errors))
}

/// Options of `lanyard bench workload`.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkloadArgs {
    /// Calls measured for each latency figure.
    #[arg(long, default_value_t = 500)]
    pub calls: usize,
    /// How long the ValidateJWTSVID throughput run lasts.
    #[arg(long, default_value = "5s")]
    pub duration: String,
    /// Concurrent clients for the throughput run.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1e6
}

/// Warm Workload API latencies (p50/p99) and ValidateJWTSVID throughput, next to raw
/// P-256 verifications per second measured in the same run.
pub async fn workload(args: WorkloadArgs) -> Result<ExitCode, String> {
    use lanyard_proto::workload as wpb;
    let duration = lanyard_core::duration::parse_duration(&args.duration)
        .map_err(|e| format!("--duration: {e}"))?;
    if args.calls == 0 || args.concurrency == 0 {
        return Err("--calls and --concurrency must be at least 1".to_string());
    }
    let dir = temp_dir()?;
    let uid = crate::cmd::agent::my_uid();
    let stack = crate::cmd::agent::start_dev_stack(dir.clone(), "bench.example", uid).await?;
    let endpoint = format!("unix://{}", stack.socket.display());
    let mut c = crate::cmd::workload::connect(Some(&endpoint)).await?;

    // Warm up, then time FetchX509SVID (first message of the stream) and FetchJWTSVID.
    let mut x509 = Vec::with_capacity(args.calls);
    let mut jwt = Vec::with_capacity(args.calls);
    let aud = vec!["bench".to_string()];
    let first = c
        .fetch_jwtsvid(wpb::JwtsvidRequest {
            audience: aud.clone(),
            spiffe_id: String::new(),
        })
        .await
        .map_err(|e| e.message().to_string())?
        .into_inner();
    let token = first
        .svids
        .first()
        .map(|s| s.svid.clone())
        .ok_or("no JWT-SVID")?;
    for i in 0..args.calls + 20 {
        let t = Instant::now();
        let mut s = c
            .fetch_x509svid(wpb::X509svidRequest {})
            .await
            .map_err(|e| e.message().to_string())?
            .into_inner();
        s.next()
            .await
            .ok_or("no X509-SVID")?
            .map_err(|e| e.message().to_string())?;
        if i >= 20 {
            x509.push(t.elapsed());
        }
        let t = Instant::now();
        c.fetch_jwtsvid(wpb::JwtsvidRequest {
            audience: aud.clone(),
            spiffe_id: String::new(),
        })
        .await
        .map_err(|e| e.message().to_string())?;
        if i >= 20 {
            jwt.push(t.elapsed());
        }
    }
    x509.sort();
    jwt.sort();

    // Raw P-256 verify, one thread, same run.
    let raw_verify = tokio::task::spawn_blocking(move || -> Result<f64, String> {
        let rng = SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
            .map_err(|e| e.to_string())?;
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, doc.as_ref())
            .map_err(|e| e.to_string())?;
        let public =
            UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, key.public_key().as_ref().to_vec());
        let sig = key.sign(&rng, b"m").map_err(|e| e.to_string())?;
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < duration {
            for _ in 0..64 {
                public
                    .verify(b"m", sig.as_ref())
                    .map_err(|e| e.to_string())?;
                n += 1;
            }
        }
        Ok(n as f64 / start.elapsed().as_secs_f64())
    })
    .await
    .map_err(|e| e.to_string())??;

    // ValidateJWTSVID throughput.
    let deadline = Instant::now() + duration;
    let start = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..args.concurrency {
        let mut c = crate::cmd::workload::connect(Some(&endpoint)).await?;
        let token = token.clone();
        handles.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                if c.validate_jwtsvid(wpb::ValidateJwtsvidRequest {
                    audience: "bench".into(),
                    svid: token.clone(),
                })
                .await
                .is_ok()
                {
                    n += 1;
                }
            }
            n
        }));
    }
    let mut validated = 0u64;
    for h in handles {
        validated += h.await.map_err(|e| e.to_string())?;
    }
    let per_sec = validated as f64 / start.elapsed().as_secs_f64();
    let _ = stack.agent.shutdown().await;
    let _ = stack.server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    let (x50, x99, j50, j99) = (
        percentile(&x509, 0.5),
        percentile(&x509, 0.99),
        percentile(&jwt, 0.5),
        percentile(&jwt, 0.99),
    );
    match args.output {
        Output::Text => {
            println!(
                "FetchX509SVID (warm, first message): p50 {x50:>8.0} µs   p99 {x99:>8.0} µs   ({} calls)",
                x509.len()
            );
            println!(
                "FetchJWTSVID  (warm, cached):        p50 {j50:>8.0} µs   p99 {j99:>8.0} µs   ({} calls)",
                jwt.len()
            );
            println!(
                "ValidateJWTSVID: {per_sec:>8.0} /s with {} clients; raw P-256 verify (1 thread): {raw_verify:>8.0} /s; ratio {:.2}",
                args.concurrency,
                per_sec / raw_verify
            );
        }
        Output::Json => println!(
            "{}",
            json!({
                "fetch_x509_svid_us": {"p50": x50, "p99": x99, "calls": x509.len()},
                "fetch_jwt_svid_us": {"p50": j50, "p99": j99, "calls": jwt.len()},
                "validate_jwt_svid_per_sec": per_sec,
                "raw_p256_verify_per_sec": raw_verify,
                "ratio": per_sec / raw_verify,
            })
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// Options of `lanyard bench audit`.
#[derive(Debug, Clone, clap::Args)]
pub struct AuditArgs {
    /// How long each measurement runs.
    #[arg(long, default_value = "3s")]
    pub duration: String,
    /// Events per append in the batched run.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Concurrent callers in the group-commit run.
    #[arg(long, default_value_t = 64)]
    pub writers: usize,
}

fn bench_event(i: u64) -> lanyard_audit::Event {
    let mut evidence = std::collections::BTreeMap::new();
    evidence.insert(
        "serial".to_string(),
        serde_json::Value::String(format!("{i:032x}")),
    );
    lanyard_audit::Event {
        version: lanyard_audit::SCHEMA_VERSION,
        id: format!("{i:032x}"),
        time: 1_800_000_000_000 + i as i64,
        kind: lanyard_audit::EventKind::X509SvidIssued,
        actor: Some("spiffe://bench.example/lanyard/agent/a".into()),
        subject: Some("spiffe://bench.example/w".into()),
        evidence,
        policy_ids: vec![],
        decision: None,
        outcome: lanyard_audit::Outcome::Success,
        reason: None,
        owner: Some("bench".into()),
        trace_id: None,
        parent_id: None,
        server_id: "bench".into(),
    }
}

/// A plain SQLite connection with the store's durability settings (WAL,
/// synchronous=FULL), for baselines.
async fn raw_sqlite(path: &std::path::Path) -> Result<sqlx::SqliteConnection, String> {
    use sqlx::ConnectOptions;
    sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .synchronous(sqlx::sqlite::SqliteSynchronous::Full)
        .connect()
        .await
        .map_err(|e| e.to_string())
}

/// Durable evidence-log appends per second next to raw durable SQLite inserts per
/// second (same file settings: WAL, synchronous=FULL), measured in the same run.
pub async fn audit(args: AuditArgs) -> Result<ExitCode, String> {
    use lanyard_store::Store;
    let duration = lanyard_core::duration::parse_duration(&args.duration)
        .map_err(|e| format!("--duration: {e}"))?;
    if args.batch == 0 {
        return Err("--batch must be at least 1".to_string());
    }
    let dir = temp_dir()?;
    // Baseline: one durable INSERT per transaction into a plain table.
    let mut conn = raw_sqlite(&dir.join("raw.db")).await?;
    sqlx::query("CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT NOT NULL)")
        .execute(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    let body =
        String::from_utf8(lanyard_audit::canonical(&bench_event(0)).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    let start = Instant::now();
    let mut raw = 0u64;
    while start.elapsed() < duration {
        sqlx::query("INSERT INTO t (body) VALUES ($1)")
            .bind(&body)
            .execute(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        raw += 1;
    }
    let raw_per_sec = raw as f64 / start.elapsed().as_secs_f64();

    let store = lanyard_store::SqliteStore::open(&dir.join("audit.db"))
        .await
        .map_err(|e| e.to_string())?;
    let mut i = 0u64;
    let start = Instant::now();
    while start.elapsed() < duration {
        store
            .append_audit(&[bench_event(i)])
            .await
            .map_err(|e| e.to_string())?;
        i += 1;
    }
    let single = i as f64 / start.elapsed().as_secs_f64();
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < duration {
        let events: Vec<_> = (0..args.batch as u64).map(|k| bench_event(i + k)).collect();
        store
            .append_audit(&events)
            .await
            .map_err(|e| e.to_string())?;
        i += args.batch as u64;
        n += args.batch as u64;
    }
    let batched = n as f64 / start.elapsed().as_secs_f64();
    // Group commit: many concurrent callers each recording one event and waiting for
    // it to be durable, as the server's issuing paths do.
    let queue = lanyard_store::AuditQueue::start(store.clone(), 256);
    let next = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(i));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.writers {
        let queue = queue.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut done = 0u64;
            while start.elapsed() < duration {
                let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                queue.append(vec![bench_event(k)]).await?;
                done += 1;
            }
            Ok::<u64, lanyard_store::StoreError>(done)
        }));
    }
    let mut grouped = 0u64;
    for t in tasks {
        grouped += t
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
    }
    let grouped_per_sec = grouped as f64 / start.elapsed().as_secs_f64();
    // The log must still verify.
    let records = store.audit_records().await.map_err(|e| e.to_string())?;
    let (key, _) = lanyard_audit::AuditKey::generate().map_err(|e| e.to_string())?;
    lanyard_audit::verify(&records, &[], &key.public_key()).map_err(|e| e.to_string())?;
    let _ = std::fs::remove_dir_all(&dir);
    println!("raw durable SQLite inserts (1 per transaction): {raw_per_sec:>9.0} /s");
    println!(
        "evidence-log appends, 1 event per commit:       {single:>9.0} /s  (ratio {:.2})",
        single / raw_per_sec
    );
    println!(
        "evidence-log appends, {} events per commit:     {batched:>9.0} /s  (ratio {:.2})",
        args.batch,
        batched / raw_per_sec
    );
    println!(
        "evidence-log appends, group commit, {} concurrent callers: {grouped_per_sec:>9.0} /s  (ratio {:.2})",
        args.writers,
        grouped_per_sec / raw_per_sec
    );
    Ok(ExitCode::SUCCESS)
}

/// Options of `lanyard bench revoke`.
#[derive(Debug, Clone, clap::Args)]
pub struct RevokeArgs {
    /// Entries created and deleted, one at a time.
    #[arg(long, default_value_t = 50)]
    pub rounds: usize,
}

/// Revocation delay: from sending `DeleteEntry` on the admin API to the connected
/// workload's FetchX509SVID stream sending an update without that SVID. The baseline
/// is the admin call's own round trip, measured in the same rounds.
pub async fn revoke(args: RevokeArgs) -> Result<ExitCode, String> {
    use lanyard_proto::admin as apb;
    use lanyard_proto::workload as wpb;
    if args.rounds == 0 {
        return Err("--rounds must be at least 1".to_string());
    }
    let dir = temp_dir()?;
    let uid = crate::cmd::agent::my_uid();
    let stack = crate::cmd::agent::start_dev_stack(dir.clone(), "bench.example", uid).await?;
    let endpoint = format!("unix://{}", stack.socket.display());
    let mut c = crate::cmd::workload::connect(Some(&endpoint)).await?;
    let mut admin = apb::admin_client::AdminClient::new(
        lanyard_server::client::unix_channel(&stack.server.admin_socket)
            .await
            .map_err(|e| e.to_string())?,
    );
    let mut stream = c
        .fetch_x509svid(wpb::X509svidRequest {})
        .await
        .map_err(|e| e.message().to_string())?
        .into_inner();
    let has = |m: &wpb::X509svidResponse, id: &str| m.svids.iter().any(|s| s.spiffe_id == id);
    let mut delays = Vec::with_capacity(args.rounds);
    let mut calls = Vec::with_capacity(args.rounds);
    for i in 0..args.rounds {
        let id = format!("spiffe://bench.example/revoke/{i}");
        let entry = admin
            .create_entry(apb::Entry {
                spiffe_id: id.clone(),
                parent_id: "spiffe://bench.example/lanyard/agent/dev".to_string(),
                selectors: vec![format!("unix:uid:{uid}")],
                owner: "bench".to_string(),
                environment: "bench".to_string(),
                ..Default::default()
            })
            .await
            .map_err(|e| e.message().to_string())?
            .into_inner();
        // Wait until the workload holds the new SVID.
        loop {
            let m = tokio::time::timeout(Duration::from_secs(20), stream.next())
                .await
                .map_err(|_| "the stream never delivered the new SVID")?
                .ok_or("the stream ended")?
                .map_err(|e| e.message().to_string())?;
            if has(&m, &id) {
                break;
            }
        }
        let t = Instant::now();
        admin
            .delete_entry(apb::EntryId { id: entry.id })
            .await
            .map_err(|e| e.message().to_string())?;
        calls.push(t.elapsed());
        loop {
            let m = tokio::time::timeout(Duration::from_secs(20), stream.next())
                .await
                .map_err(|_| "the stream never dropped the revoked SVID")?
                .ok_or("the stream ended")?
                .map_err(|e| e.message().to_string())?;
            if !has(&m, &id) {
                break;
            }
        }
        delays.push(t.elapsed());
    }
    delays.sort();
    calls.sort();
    // Open streams would hold the graceful shutdown.
    drop(stream);
    drop(c);
    drop(admin);
    let _ = stack.agent.shutdown().await;
    let _ = stack.server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    // `percentile` takes a fraction and returns microseconds.
    let ms = |us: f64| us / 1000.0;
    let (p50, p99, max) = (
        percentile(&delays, 0.5),
        percentile(&delays, 0.99),
        delays.last().map_or(0.0, |d| d.as_secs_f64() * 1e6),
    );
    let call50 = percentile(&calls, 0.5);
    println!("rounds: {}", args.rounds);
    println!(
        "admin DeleteEntry round trip (baseline): p50 {:.2} ms, p99 {:.2} ms",
        ms(call50),
        ms(percentile(&calls, 0.99))
    );
    println!(
        "delete -> workload stream update:        p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (p50 ratio to baseline {:.1})",
        ms(p50),
        ms(p99),
        ms(max),
        p50 / call50.max(f64::EPSILON)
    );
    println!(
        "target p99 <= 1000 ms: {}",
        if p99 <= 1_000_000.0 { "met" } else { "NOT met" }
    );
    Ok(ExitCode::SUCCESS)
}

/// Options of `lanyard bench authz`.
#[derive(Debug, Clone, clap::Args)]
pub struct AuthzArgs {
    /// How long each measurement runs.
    #[arg(long, default_value = "3s")]
    pub duration: String,
    /// Concurrent HTTP clients.
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
}

/// One HTTP/1.1 request on a kept-alive connection; returns the status and body.
async fn http_roundtrip(
    conn: &mut tokio::io::BufStream<tokio::net::TcpStream>,
    request: &[u8],
) -> Result<(u16, Vec<u8>), String> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    conn.write_all(request).await.map_err(|e| e.to_string())?;
    conn.flush().await.map_err(|e| e.to_string())?;
    let mut line = String::new();
    conn.read_line(&mut line).await.map_err(|e| e.to_string())?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {line:?}"))?;
    let mut len = 0usize;
    loop {
        line.clear();
        conn.read_line(&mut line).await.map_err(|e| e.to_string())?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            len = v.trim().parse().map_err(|_| "bad content-length")?;
        }
    }
    let mut body = vec![0u8; len];
    conn.read_exact(&mut body)
        .await
        .map_err(|e| e.to_string())?;
    Ok((status, body))
}

fn http_request(addr: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Vec<u8> {
    let mut r = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    r.push_str("\r\n");
    r.push_str(body);
    r.into_bytes()
}

/// AuthZEN decisions over loopback HTTP (one client: latency and rate; several:
/// throughput) next to in-process decisions of the same policy set and request on
/// one thread, and those next to raw Cedar `is_authorized`, all in the same run;
/// then token exchange latency.
pub async fn authz(args: AuthzArgs) -> Result<ExitCode, String> {
    use lanyard_policy::{
        AuthzRequest, CompiledPolicies, PolicyKind, PreparedWorkload, Target, WorkloadFacts,
    };
    use lanyard_proto::workload as wpb;
    let duration = lanyard_core::duration::parse_duration(&args.duration)
        .map_err(|e| format!("--duration: {e}"))?;
    if args.clients == 0 {
        return Err("--clients must be at least 1".to_string());
    }
    let dir = temp_dir()?;
    let uid = crate::cmd::agent::my_uid();
    let stack = crate::cmd::agent::start_dev_stack(dir.clone(), "bench.example", uid).await?;
    let endpoint = format!("unix://{}", stack.socket.display());
    let workload = stack.workload_id.clone();
    let text = lanyard_policy::bench_authz_policy(&workload);
    let mut admin = apb::admin_client::AdminClient::new(
        lanyard_server::client::unix_channel(&stack.server.admin_socket)
            .await
            .map_err(|e| e.to_string())?,
    );
    admin
        .set_policy(apb::SetPolicyRequest {
            kind: "authz".to_string(),
            body: text.clone(),
        })
        .await
        .map_err(|e| e.message().to_string())?;
    let issuer = "https://bench.example".to_string();
    let mut c = crate::cmd::workload::connect(Some(&endpoint)).await?;
    let token = c
        .fetch_jwtsvid(wpb::JwtsvidRequest {
            audience: vec![issuer.clone()],
            spiffe_id: String::new(),
        })
        .await
        .map_err(|e| e.message().to_string())?
        .into_inner()
        .svids
        .first()
        .map(|s| s.svid.clone())
        .ok_or("no JWT-SVID")?;

    // In-process: the same policy set and request, one thread. Three measures,
    // interleaved in short rounds so that a noisy machine slows them alike: raw
    // Cedar `is_authorized` on a request and entities built once (the floor), the
    // whole decision (`evaluate_authz`: building the Cedar request and entities,
    // Cedar, the explained decision), and the same with the workload's entity
    // prepared once (as a caller caching it per entry revision does).
    let compiled =
        CompiledPolicies::compile(PolicyKind::Authz, &text).map_err(|e| e.to_string())?;
    let facts = WorkloadFacts {
        spiffe_id: workload.clone(),
        registered: true,
        owner: "dev".to_string(),
        environment: "dev".to_string(),
        selectors: vec![format!("unix:uid:{uid}")],
    };
    let mut req = AuthzRequest::new(facts.clone(), "read", "o-1");
    req.target = Target::Resource {
        id: "o-1".to_string(),
        kind: "orders".to_string(),
        properties: Default::default(),
    };
    req.context.insert("ip".to_string(), json!("10.0.0.1"));
    let raw = compiled.raw_baseline(&req).map_err(|e| e.to_string())?;
    let prepared = PreparedWorkload::new(facts).map_err(|e| e.to_string())?;
    let inproc = tokio::task::spawn_blocking(move || {
        let mut bare = req.clone();
        bare.principal = WorkloadFacts::default();
        let decide = |k: usize| match k {
            0 => Ok(raw.is_authorized()),
            1 => compiled.evaluate_authz(&req).map(|d| d.allowed),
            _ => compiled
                .evaluate_authz_prepared(&prepared, &bare)
                .map(|d| d.allowed),
        };
        let mut lat: [Vec<Duration>; 3] = Default::default();
        let mut spent = [Duration::ZERO; 3];
        let start = Instant::now();
        while start.elapsed() < duration * 3 {
            for k in 0..3 {
                let round = Instant::now();
                for _ in 0..200 {
                    let t = Instant::now();
                    let ok = decide(k);
                    lat[k].push(t.elapsed());
                    if !matches!(ok, Ok(true)) {
                        return Err(format!("in-process measure {k}: the decision is not allow"));
                    }
                }
                spent[k] += round.elapsed();
            }
        }
        let mut out = Vec::new();
        for (mut l, s) in lat.into_iter().zip(spent) {
            let rate = l.len() as f64 / s.as_secs_f64().max(f64::EPSILON);
            l.sort();
            out.push((rate, l));
        }
        Ok(out)
    })
    .await
    .map_err(|e| e.to_string())??;
    let [
        (raw_rate, raw_lat),
        (inproc_rate, inproc_lat),
        (prep_rate, prep_lat),
    ]: [(f64, Vec<Duration>); 3] = inproc
        .try_into()
        .map_err(|_| "three in-process measures".to_string())?;

    // Over loopback HTTP.
    let addr = stack.server.http_addr.to_string();
    let body = json!({
        "subject": {"type": "workload", "id": workload},
        "action": {"name": "read"},
        "resource": {"type": "orders", "id": "o-1"},
        "context": {"ip": "10.0.0.1"}
    })
    .to_string();
    let auth = format!("Bearer {token}");
    let request = http_request(
        &addr,
        "/access/v1/evaluation",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        &body,
    );
    let run = |clients: usize| {
        let request = request.clone();
        let addr = addr.clone();
        async move {
            let mut tasks = tokio::task::JoinSet::new();
            let start = Instant::now();
            for _ in 0..clients {
                let request = request.clone();
                let addr = addr.clone();
                tasks.spawn(async move {
                    let tcp = tokio::net::TcpStream::connect(&addr)
                        .await
                        .map_err(|e| e.to_string())?;
                    let _ = tcp.set_nodelay(true);
                    let mut conn = tokio::io::BufStream::new(tcp);
                    let mut lat = Vec::new();
                    // Warm-up (first call verifies the JWT-SVID; later ones hit the cache).
                    for _ in 0..20 {
                        http_roundtrip(&mut conn, &request).await?;
                    }
                    let t0 = Instant::now();
                    while t0.elapsed() < duration {
                        let t = Instant::now();
                        let (status, body) = http_roundtrip(&mut conn, &request).await?;
                        lat.push(t.elapsed());
                        if status != 200 || !body.windows(15).any(|w| w == b"\"decision\":true") {
                            return Err(format!(
                                "unexpected answer {status}: {}",
                                String::from_utf8_lossy(&body)
                            ));
                        }
                    }
                    Ok::<_, String>(lat)
                });
            }
            let mut all = Vec::new();
            while let Some(r) = tasks.join_next().await {
                all.extend(r.map_err(|e| e.to_string())??);
            }
            let secs = start.elapsed().as_secs_f64();
            all.sort();
            Ok::<_, String>((all.len() as f64 / secs, all))
        }
    };
    let (one_rate, one_lat) = run(1).await?;
    let (many_rate, _) = run(args.clients).await?;

    // Token exchange latency (JWT-SVID verify, policy, sign, durable audit event).
    let form = format!(
        "grant_type={}&subject_token={}&subject_token_type={}&audience=spiffe%3A%2F%2Fbench.example%2Forders",
        "urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange",
        token,
        "urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Ajwt"
    );
    let exchange = http_request(
        &addr,
        "/oauth2/token",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        &form,
    );
    let tcp = tokio::net::TcpStream::connect(&addr)
        .await
        .map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let mut conn = tokio::io::BufStream::new(tcp);
    let mut ex = Vec::new();
    for i in 0..220 {
        let t = Instant::now();
        let (status, body) = http_roundtrip(&mut conn, &exchange).await?;
        if status != 200 {
            return Err(format!(
                "token exchange failed {status}: {}",
                String::from_utf8_lossy(&body)
            ));
        }
        if i >= 20 {
            ex.push(t.elapsed());
        }
    }
    ex.sort();
    drop(c);
    drop(admin);
    let _ = stack.agent.shutdown().await;
    let _ = stack.server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);

    let us = |v: &[Duration], p: f64| percentile(v, p);
    println!("policy set: {} policies", 10);
    println!(
        "raw Cedar is_authorized (1 thread):  {:>9.0} decisions/s  p50 {:.1} µs  p99 {:.1} µs",
        raw_rate,
        us(&raw_lat, 0.5),
        us(&raw_lat, 0.99)
    );
    println!(
        "in-process decision (1 thread):      {:>9.0} decisions/s  p50 {:.1} µs  p99 {:.1} µs  ({:.2}× the raw time)",
        inproc_rate,
        us(&inproc_lat, 0.5),
        us(&inproc_lat, 0.99),
        raw_rate / inproc_rate.max(f64::EPSILON)
    );
    println!(
        "in-process, prepared workload:       {:>9.0} decisions/s  p50 {:.1} µs  p99 {:.1} µs  ({:.2}× the raw time)",
        prep_rate,
        us(&prep_lat, 0.5),
        us(&prep_lat, 0.99),
        raw_rate / prep_rate.max(f64::EPSILON)
    );
    println!(
        "AuthZEN over HTTP, 1 client:        {:>9.0} decisions/s  p50 {:.1} µs  p99 {:.1} µs  (ratio to in-process {:.2})",
        one_rate,
        us(&one_lat, 0.5),
        us(&one_lat, 0.99),
        one_rate / inproc_rate.max(f64::EPSILON)
    );
    println!(
        "AuthZEN over HTTP, {} clients:      {:>9.0} decisions/s  (ratio to in-process {:.2})",
        args.clients,
        many_rate,
        many_rate / inproc_rate.max(f64::EPSILON)
    );
    println!(
        "token exchange (no actor), 1 client: p50 {:.1} µs  p99 {:.1} µs",
        us(&ex, 0.5),
        us(&ex, 0.99)
    );
    println!(
        "target in-process ≤ 1.5× raw: {} (prepared workload: {})",
        if raw_rate / inproc_rate.max(f64::EPSILON) <= 1.5 {
            "met"
        } else {
            "NOT met"
        },
        if raw_rate / prep_rate.max(f64::EPSILON) <= 1.5 {
            "met"
        } else {
            "NOT met"
        }
    );
    println!(
        "target p99 < 1 ms over HTTP: {}",
        if us(&one_lat, 0.99) < 1000.0 {
            "met"
        } else {
            "NOT met"
        }
    );
    Ok(ExitCode::SUCCESS)
}

/// Options of `lanyard bench import`.
#[derive(Debug, Clone, clap::Args)]
pub struct ImportArgs {
    /// Entries in the generated SPIRE export (`spire-server entry show -output json`).
    #[arg(long, default_value_t = 5000)]
    pub entries: usize,
    /// Entries then created one `CreateEntry` call at a time, for comparison.
    #[arg(long, default_value_t = 300)]
    pub single: usize,
}

/// A SPIRE `entry show -output json` document of `n` workload entries.
fn spire_export(td: &str, n: usize) -> String {
    let entries: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            json!({
                "id": format!("spire-{i}"),
                "spiffe_id": {"trust_domain": td, "path": format!("/import/svc-{i}")},
                "parent_id": {"trust_domain": td, "path": format!("/spire/agent/x509pop/node-{}", i % 50)},
                "selectors": [{"type": "unix", "value": format!("uid:{}", 10_000 + i)}, {"type": "unix", "value": "gid:100"}],
                "x509_svid_ttl": 3600, "jwt_svid_ttl": 300, "federates_with": [], "admin": false,
                "downstream": false, "expires_at": "0", "dns_names": [format!("svc-{i}.internal")],
                "revision_number": "0", "store_svid": false, "hint": "", "created_at": "1712345678"
            })
        })
        .collect();
    json!({"entries": entries, "next_page_token": ""}).to_string()
}

/// Plain inserts of `n` entry-shaped rows in one durable SQLite transaction (same
/// settings as the store: WAL, synchronous=FULL, the identity index): rows/s.
async fn raw_entry_inserts(dir: &std::path::Path, n: usize) -> Result<f64, String> {
    use sqlx::Connection;
    let mut conn = raw_sqlite(&dir.join("raw-entries.db")).await?;
    for sql in [
        "CREATE TABLE e (id TEXT PRIMARY KEY, spiffe_id TEXT NOT NULL, parent_id TEXT NOT NULL, selectors TEXT NOT NULL, owner TEXT NOT NULL, dns_names TEXT NOT NULL)",
        "CREATE UNIQUE INDEX e_identity ON e (spiffe_id, parent_id, selectors)",
    ] {
        sqlx::query(sql)
            .execute(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
    }
    let start = Instant::now();
    let mut tx = conn.begin().await.map_err(|e| e.to_string())?;
    for i in 0..n {
        sqlx::query("INSERT INTO e VALUES ($1, $2, $3, $4, $5, $6)")
            .bind(format!("{i:032x}"))
            .bind(format!("spiffe://bench.example/import/svc-{i}"))
            .bind("spiffe://bench.example/spire/agent/x509pop/node-0")
            .bind(format!("[\"unix:gid:100\",\"unix:uid:{}\"]", 10_000 + i))
            .bind("bench")
            .bind(format!("[\"svc-{i}.internal\"]"))
            .execute(&mut *tx)
            .await
            .map_err(|e| e.to_string())?;
    }
    tx.commit().await.map_err(|e| e.to_string())?;
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// SPIRE import throughput on SQLite: `lanyard entry import --spire`'s whole path
/// (parse, list, compare, BatchCreateEntry with registration policy and one
/// evidence event per entry) next to plain inserts in one transaction and to
/// single `CreateEntry` calls, measured in the same run.
pub async fn import(args: ImportArgs) -> Result<ExitCode, String> {
    if args.entries == 0 {
        return Err("--entries must be at least 1".to_string());
    }
    let dir = temp_dir()?;
    let result = run_import(&args, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn run_import(args: &ImportArgs, dir: &std::path::Path) -> Result<ExitCode, String> {
    let raw = raw_entry_inserts(dir, args.entries).await?;
    let td = "bench.example";
    let (server, mut admin) = start_server(td, &dir.join("server")).await?;
    let text = spire_export(td, args.entries);
    let start = Instant::now();
    let read = crate::cmd::spire::read(&text).map_err(|e| e.to_string())?;
    let (inputs, _) = crate::cmd::bulk::spire_inputs(read, "bench", "bench");
    let reports = crate::cmd::bulk::run(&mut admin, inputs, Default::default(), false).await?;
    let elapsed = start.elapsed();
    let tally = crate::cmd::bulk::tally(&reports);
    let created = tally.get("created").copied().unwrap_or(0);
    if created != args.entries {
        return Err(format!(
            "only {created} of {} entries were created: {tally:?}",
            args.entries
        ));
    }
    let imported = created as f64 / elapsed.as_secs_f64();
    // Re-import: everything is unchanged (one list and a compare).
    let start = Instant::now();
    let read = crate::cmd::spire::read(&text).map_err(|e| e.to_string())?;
    let (inputs, _) = crate::cmd::bulk::spire_inputs(read, "bench", "bench");
    let again = crate::cmd::bulk::run(&mut admin, inputs, Default::default(), false).await?;
    let reimport = again.len() as f64 / start.elapsed().as_secs_f64();
    let start = Instant::now();
    for i in 0..args.single {
        admin
            .create_entry(apb::Entry {
                spiffe_id: format!("spiffe://{td}/single/svc-{i}"),
                parent_id: format!("spiffe://{td}/spire/agent/x509pop/node-0"),
                selectors: vec![format!("unix:uid:{}", 10_000 + i)],
                owner: "bench".to_string(),
                environment: "bench".to_string(),
                ..Default::default()
            })
            .await
            .map_err(|e| e.message().to_string())?;
    }
    let single = args.single as f64 / start.elapsed().as_secs_f64().max(f64::EPSILON);
    server.shutdown().await.map_err(|e| e.to_string())?;
    println!(
        "raw SQLite INSERTs, one transaction ({} rows):      {raw:>9.0} rows/s",
        args.entries
    );
    println!(
        "entry import --spire ({} entries, batches of {}):  {imported:>9.0} entries/s  (ratio {:.2})",
        args.entries,
        apb::MAX_ENTRY_BATCH,
        imported / raw
    );
    println!("re-import, all unchanged:                          {reimport:>9.0} entries/s");
    println!(
        "single CreateEntry calls ({}):                     {single:>9.0} entries/s  (ratio {:.2})",
        args.single,
        single / raw
    );
    Ok(ExitCode::SUCCESS)
}
