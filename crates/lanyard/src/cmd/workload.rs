//! Workload-side commands: a SPIFFE Workload API client (like `spire-agent api`).

use std::path::Path;
use std::process::ExitCode;

use lanyard_proto::workload as pb;
use lanyard_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use serde_json::json;
use tokio_stream::StreamExt;
use tonic::service::Interceptor;
use tonic::transport::{Channel, Endpoint};

use crate::Output;

/// Adds the mandatory `workload.spiffe.io: true` metadata.
#[derive(Clone, Copy)]
pub struct SecurityHeader;

impl Interceptor for SecurityHeader {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert(
            "workload.spiffe.io",
            tonic::metadata::MetadataValue::from_static("true"),
        );
        Ok(req)
    }
}

type Client = SpiffeWorkloadApiClient<
    tonic::service::interceptor::InterceptedService<Channel, SecurityHeader>,
>;

/// Connect to the Workload API named by `--socket` or `SPIFFE_ENDPOINT_SOCKET`
/// (`unix:///path` or `tcp://ip:port`).
pub async fn connect(socket: Option<&str>) -> Result<Client, String> {
    Ok(SpiffeWorkloadApiClient::with_interceptor(
        channel(socket).await?,
        SecurityHeader,
    ))
}

/// A channel to the agent socket named by `--socket` or `SPIFFE_ENDPOINT_SOCKET`.
pub async fn channel(socket: Option<&str>) -> Result<Channel, String> {
    let addr = match socket {
        Some(s) => s.to_string(),
        None => std::env::var("SPIFFE_ENDPOINT_SOCKET").map_err(|_| {
            "no Workload API address: pass --socket unix:///path/agent.sock or set SPIFFE_ENDPOINT_SOCKET".to_string()
        })?,
    };
    let channel = if let Some(path) = addr
        .strip_prefix("unix://")
        .or_else(|| addr.strip_prefix("unix:"))
    {
        if !path.starts_with('/') {
            return Err(format!(
                "{addr:?}: a unix socket address needs an absolute path, e.g. unix:///tmp/agent.sock"
            ));
        }
        lanyard_server::client::unix_channel(Path::new(path))
            .await
            .map_err(|e| format!("cannot reach the Workload API at {addr}: {e}"))?
    } else if let Some(hostport) = addr.strip_prefix("tcp://") {
        Endpoint::try_from(format!("http://{hostport}"))
            .map_err(|e| e.to_string())?
            .connect()
            .await
            .map_err(|e| format!("cannot reach the Workload API at {addr}: {e}"))?
    } else {
        return Err(format!(
            "{addr:?} is not a Workload API address; use unix:///path or tcp://ip:port"
        ));
    };
    Ok(channel)
}

/// `lanyard secret fetch NAME`: the secret of a time-boxed exception, released by
/// the agent to this (attested) process; raw bytes on stdout, or JSON.
pub async fn secret_fetch(
    socket: Option<&str>,
    name: &str,
    spiffe_id: Option<&str>,
    output: Output,
) -> Result<ExitCode, String> {
    use lanyard_proto::secrets::secrets_client::SecretsClient;
    let mut c = SecretsClient::with_interceptor(channel(socket).await?, SecurityHeader);
    let r = c
        .fetch_secret(lanyard_proto::secrets::FetchSecretRequest {
            name: name.to_string(),
            spiffe_id: spiffe_id.unwrap_or_default().to_string(),
        })
        .await
        .map_err(|e| format!("secret {name:?} not released: {}", e.message()))?
        .into_inner();
    match output {
        Output::Text => {
            use std::io::Write;
            std::io::stdout()
                .write_all(&r.secret)
                .map_err(|e| e.to_string())?;
        }
        Output::Json => println!(
            "{}",
            json!({
                "name": r.name,
                "spiffe_id": r.spiffe_id,
                "expires_at": r.expires_at,
                "secret": String::from_utf8_lossy(&r.secret),
            })
        ),
    }
    Ok(ExitCode::SUCCESS)
}

fn status(e: tonic::Status) -> String {
    format!("{:?}: {}", e.code(), e.message())
}

fn pem_all(tag: &str, ders: &[Vec<u8>]) -> String {
    ders.iter()
        .map(|d| pem::encode(&pem::Pem::new(tag, d.clone())))
        .collect()
}

fn split(der: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    lanyard_core::x509::split_der_chain(der).map_err(|e| e.to_string())
}

fn write_file(path: &Path, data: &[u8], private: bool) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    f.write_all(data)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

pub async fn svid_fetch(
    socket: Option<&str>,
    write: Option<&Path>,
    output: Output,
) -> Result<ExitCode, String> {
    let mut c = connect(socket).await?;
    let mut stream = c
        .fetch_x509svid(pb::X509svidRequest {})
        .await
        .map_err(status)?
        .into_inner();
    let resp = stream
        .next()
        .await
        .ok_or("the Workload API closed the stream without an answer")?
        .map_err(status)?;
    let mut summary = Vec::new();
    for (i, s) in resp.svids.iter().enumerate() {
        let chain = split(&s.x509_svid)?;
        let info = lanyard_core::x509::summarize(&chain[0]).map_err(|e| e.to_string())?;
        if let Some(dir) = write {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            let (svid, key, bundle) = if i == 0 {
                (
                    "svid.pem".to_string(),
                    "svid.key".to_string(),
                    "bundle.pem".to_string(),
                )
            } else {
                (
                    format!("svid.{i}.pem"),
                    format!("svid.{i}.key"),
                    format!("bundle.{i}.pem"),
                )
            };
            write_file(
                &dir.join(svid),
                pem_all("CERTIFICATE", &chain).as_bytes(),
                false,
            )?;
            write_file(
                &dir.join(key),
                pem::encode(&pem::Pem::new("PRIVATE KEY", s.x509_svid_key.clone())).as_bytes(),
                true,
            )?;
            write_file(
                &dir.join(bundle),
                pem_all("CERTIFICATE", &split(&s.bundle)?).as_bytes(),
                false,
            )?;
        }
        summary.push(json!({
            "spiffe_id": s.spiffe_id,
            "hint": s.hint,
            "serial": info.serial,
            "not_after": info.not_after,
            "chain_length": chain.len(),
        }));
    }
    match output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&summary).unwrap_or_default()
        ),
        Output::Text => {
            for s in &summary {
                println!(
                    "SPIFFE ID:  {}",
                    s["spiffe_id"].as_str().unwrap_or_default()
                );
                println!("Serial:     {}", s["serial"].as_str().unwrap_or_default());
                println!("Expires at: {} (unix seconds)", s["not_after"]);
                if let Some(h) = s["hint"].as_str().filter(|h| !h.is_empty()) {
                    println!("Hint:       {h}");
                }
            }
            if let Some(dir) = write {
                println!(
                    "Wrote svid.pem, svid.key and bundle.pem to {}",
                    dir.display()
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn svid_jwt(
    socket: Option<&str>,
    audience: Vec<String>,
    spiffe_id: Option<String>,
    output: Output,
) -> Result<ExitCode, String> {
    if audience.is_empty() {
        return Err("--audience is required".to_string());
    }
    let mut c = connect(socket).await?;
    let r = c
        .fetch_jwtsvid(pb::JwtsvidRequest {
            audience,
            spiffe_id: spiffe_id.unwrap_or_default(),
        })
        .await
        .map_err(status)?
        .into_inner();
    match output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(
                &r.svids
                    .iter()
                    .map(|s| json!({"spiffe_id": s.spiffe_id, "token": s.svid, "hint": s.hint}))
                    .collect::<Vec<_>>()
            )
            .unwrap_or_default()
        ),
        Output::Text => {
            for s in &r.svids {
                println!("{}", s.svid);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn svid_validate(
    socket: Option<&str>,
    audience: String,
    token: String,
    output: Output,
) -> Result<ExitCode, String> {
    let mut c = connect(socket).await?;
    match c
        .validate_jwtsvid(pb::ValidateJwtsvidRequest {
            audience,
            svid: token,
        })
        .await
    {
        Ok(r) => {
            let r = r.into_inner();
            match output {
                Output::Json => println!("{}", json!({"valid": true, "spiffe_id": r.spiffe_id})),
                Output::Text => println!("valid JWT-SVID for {}", r.spiffe_id),
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) if e.code() == tonic::Code::InvalidArgument => {
            match output {
                Output::Json => println!("{}", json!({"valid": false, "error": e.message()})),
                Output::Text => eprintln!("invalid JWT-SVID: {}", e.message()),
            }
            Ok(ExitCode::from(1))
        }
        Err(e) => Err(status(e)),
    }
}

pub async fn bundle_fetch(socket: Option<&str>, jwks: bool) -> Result<ExitCode, String> {
    let mut c = connect(socket).await?;
    if jwks {
        let mut s = c
            .fetch_jwt_bundles(pb::JwtBundlesRequest {})
            .await
            .map_err(status)?
            .into_inner();
        let r = s.next().await.ok_or("no answer")?.map_err(status)?;
        for (td, doc) in r.bundles {
            println!("# {td}\n{}", String::from_utf8_lossy(&doc));
        }
    } else {
        let mut s = c
            .fetch_x509_bundles(pb::X509BundlesRequest {})
            .await
            .map_err(status)?
            .into_inner();
        let r = s.next().await.ok_or("no answer")?.map_err(status)?;
        for (td, der) in r.bundles {
            println!("# {td}");
            print!("{}", pem_all("CERTIFICATE", &split(&der)?));
        }
    }
    Ok(ExitCode::SUCCESS)
}
