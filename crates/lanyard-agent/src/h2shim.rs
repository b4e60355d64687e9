//! A shim between an accepted Workload API connection and the gRPC server.
//!
//! tonic's HTTP/2 layer (h2) refuses a request whose `:authority` is not a valid URI
//! authority, but several gRPC implementations (gRPC C-core, so grpc-python and thus
//! py-spiffe; grpc-java) send the Unix socket *path* there. SPIFFE clients must work
//! unchanged, so the client-to-server byte stream passes through this shim: HTTP/2
//! frames are forwarded as they are, except header blocks, which are decoded (HPACK),
//! get an invalid `:authority` replaced by `localhost`, and are re-encoded. The
//! server-to-client direction is copied untouched.
//!
//! The caller's kernel credentials travel with the connection as [`PeerInfo`], so
//! workload attestation still sees the real process.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};
use tokio::net::UnixStream;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADERS: u8 = 0x1;
const FRAME_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
/// The HTTP/2 default SETTINGS_MAX_FRAME_SIZE, which the server keeps.
const MAX_FRAME: usize = 16_384;
/// Largest header block we accept from a client.
const MAX_HEADER_BLOCK: usize = 256 * 1024;

/// The caller's credentials, as the kernel reported them when it connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerInfo {
    pub pid: Option<i32>,
    pub uid: u32,
    pub gid: u32,
}

/// The server's end of a shimmed connection.
#[derive(Debug)]
pub struct ShimmedStream {
    inner: DuplexStream,
    info: PeerInfo,
}

impl tonic::transport::server::Connected for ShimmedStream {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.info
    }
}

impl AsyncRead for ShimmedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for ShimmedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Wrap an accepted connection.
pub fn shim(sock: UnixStream) -> io::Result<ShimmedStream> {
    let cred = sock.peer_cred()?;
    let info = PeerInfo {
        pid: cred.pid(),
        uid: cred.uid(),
        gid: cred.gid(),
    };
    let (client_end, server_end) = tokio::io::duplex(64 * 1024);
    let (mut sock_read, mut sock_write) = sock.into_split();
    let (mut pipe_read, mut pipe_write) = tokio::io::split(client_end);
    tokio::spawn(async move {
        if let Err(e) = rewrite(&mut sock_read, &mut pipe_write).await {
            tracing::debug!(error = %e, "Workload API connection ended");
        }
        let _ = pipe_write.shutdown().await;
    });
    tokio::spawn(async move {
        let _ = tokio::io::copy(&mut pipe_read, &mut sock_write).await;
        let _ = sock_write.shutdown().await;
    });
    Ok(ShimmedStream {
        inner: server_end,
        info,
    })
}

/// An `:authority` h2 would refuse (it must be a URI authority: no path, no spaces).
fn bad_authority(v: &[u8]) -> bool {
    v.is_empty()
        || v.iter()
            .any(|b| matches!(b, b'/' | b' ' | b'\\' | b'%') || b.is_ascii_control())
}

struct Pending {
    stream_id: u32,
    flags: u8,
    priority: Option<[u8; 5]>,
    block: Vec<u8>,
}

fn bad_data(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    typ: u8,
    flags: u8,
    stream_id: u32,
    payload: &[u8],
) -> io::Result<()> {
    let len = payload.len();
    let mut h = [0u8; 9];
    h[0] = ((len >> 16) & 0xff) as u8;
    h[1] = ((len >> 8) & 0xff) as u8;
    h[2] = (len & 0xff) as u8;
    h[3] = typ;
    h[4] = flags;
    h[5..9].copy_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
    w.write_all(&h).await?;
    w.write_all(payload).await
}

/// Re-encode a complete header block and write it as HEADERS (+ CONTINUATION) frames.
async fn emit<W: AsyncWrite + Unpin>(
    w: &mut W,
    p: Pending,
    decoder: &mut loona_hpack::Decoder<'_>,
    encoder: &mut loona_hpack::Encoder<'_>,
) -> io::Result<()> {
    let mut headers = decoder
        .decode(&p.block)
        .map_err(|e| bad_data(&format!("bad header block: {e:?}")))?;
    for (name, value) in headers.iter_mut() {
        if name.as_slice() == b":authority" && bad_authority(value) {
            *value = b"localhost".to_vec();
        }
    }
    let block = encoder.encode(headers.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
    let prio_len = if p.priority.is_some() { 5 } else { 0 };
    let first_room = MAX_FRAME - prio_len;
    let (first, mut rest) = block.split_at(block.len().min(first_room));
    let mut flags = p.flags & FLAG_END_STREAM;
    let mut payload = Vec::with_capacity(first.len() + prio_len);
    if let Some(prio) = p.priority {
        flags |= FLAG_PRIORITY;
        payload.extend_from_slice(&prio);
    }
    payload.extend_from_slice(first);
    if rest.is_empty() {
        flags |= FLAG_END_HEADERS;
    }
    write_frame(w, FRAME_HEADERS, flags, p.stream_id, &payload).await?;
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(rest.len().min(MAX_FRAME));
        rest = tail;
        let f = if rest.is_empty() { FLAG_END_HEADERS } else { 0 };
        write_frame(w, FRAME_CONTINUATION, f, p.stream_id, chunk).await?;
    }
    Ok(())
}

/// Forward the client's HTTP/2 stream, fixing header blocks on the way.
pub async fn rewrite<R, W>(r: &mut R, w: &mut W) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut preface = [0u8; 24];
    r.read_exact(&mut preface).await?;
    w.write_all(&preface).await?;
    if preface != PREFACE {
        // Not HTTP/2 with prior knowledge: pass the rest through; h2 will refuse it.
        tokio::io::copy(r, w).await?;
        return Ok(());
    }
    let mut decoder = loona_hpack::Decoder::new();
    let mut encoder = loona_hpack::Encoder::new();
    let mut pending: Option<Pending> = None;
    loop {
        let mut h = [0u8; 9];
        match r.read_exact(&mut h).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let len = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
        let (typ, flags) = (h[3], h[4]);
        let stream_id = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
        if len > MAX_FRAME {
            return Err(bad_data("frame larger than the server's maximum"));
        }
        let mut payload = vec![0u8; len];
        r.read_exact(&mut payload).await?;
        match typ {
            FRAME_HEADERS => {
                let mut body: &[u8] = &payload;
                let mut pad = 0usize;
                if flags & FLAG_PADDED != 0 {
                    let (&p, tail) = body
                        .split_first()
                        .ok_or_else(|| bad_data("short HEADERS"))?;
                    pad = usize::from(p);
                    body = tail;
                }
                let mut priority = None;
                if flags & FLAG_PRIORITY != 0 {
                    if body.len() < 5 {
                        return Err(bad_data("short HEADERS priority"));
                    }
                    let mut p = [0u8; 5];
                    p.copy_from_slice(&body[..5]);
                    priority = Some(p);
                    body = &body[5..];
                }
                if pad > body.len() {
                    return Err(bad_data("HEADERS padding exceeds the frame"));
                }
                let fragment = &body[..body.len() - pad];
                let p = Pending {
                    stream_id,
                    flags,
                    priority,
                    block: fragment.to_vec(),
                };
                if flags & FLAG_END_HEADERS != 0 {
                    emit(w, p, &mut decoder, &mut encoder).await?;
                } else {
                    pending = Some(p);
                }
            }
            FRAME_CONTINUATION => {
                let Some(mut p) = pending.take() else {
                    return Err(bad_data("CONTINUATION without HEADERS"));
                };
                if p.stream_id != stream_id || p.block.len() + payload.len() > MAX_HEADER_BLOCK {
                    return Err(bad_data("bad CONTINUATION"));
                }
                p.block.extend_from_slice(&payload);
                if flags & FLAG_END_HEADERS != 0 {
                    emit(w, p, &mut decoder, &mut encoder).await?;
                } else {
                    pending = Some(p);
                }
            }
            _ => {
                if pending.is_some() {
                    return Err(bad_data("frame interleaved inside a header block"));
                }
                w.write_all(&h).await?;
                w.write_all(&payload).await?;
            }
        }
        w.flush().await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(typ: u8, flags: u8, sid: u32, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![0, 0, 0, typ, flags];
        let len = payload.len();
        v[0] = (len >> 16) as u8;
        v[1] = (len >> 8) as u8;
        v[2] = len as u8;
        v.extend_from_slice(&sid.to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    async fn run(input: Vec<u8>) -> Vec<u8> {
        let mut out = Vec::new();
        rewrite(&mut input.as_slice(), &mut out).await.unwrap();
        out
    }

    fn headers_of(out: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        // Skip preface and the first (settings) frame, gather header blocks.
        let mut i = 24;
        let mut block = Vec::new();
        while i + 9 <= out.len() {
            let len = (usize::from(out[i]) << 16)
                | (usize::from(out[i + 1]) << 8)
                | usize::from(out[i + 2]);
            let typ = out[i + 3];
            if typ == FRAME_HEADERS || typ == FRAME_CONTINUATION {
                block.extend_from_slice(&out[i + 9..i + 9 + len]);
            }
            i += 9 + len;
        }
        loona_hpack::Decoder::new().decode(&block).unwrap()
    }

    #[tokio::test]
    async fn a_socket_path_authority_becomes_localhost() {
        let mut enc = loona_hpack::Encoder::new();
        let block = enc.encode(vec![
            (&b":method"[..], &b"POST"[..]),
            (b":scheme", b"http"),
            (b":path", b"/SpiffeWorkloadAPI/FetchX509SVID"),
            (b":authority", b"/tmp/agent.sock"),
            (b"workload.spiffe.io", b"true"),
        ]);
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[])); // SETTINGS passes through
        // Split the block over HEADERS (padded) + CONTINUATION.
        let (a, b) = block.split_at(10);
        let mut padded = vec![3u8];
        padded.extend_from_slice(a);
        padded.extend_from_slice(&[0, 0, 0]);
        input.extend(frame(
            FRAME_HEADERS,
            FLAG_PADDED | FLAG_END_STREAM,
            1,
            &padded,
        ));
        input.extend(frame(FRAME_CONTINUATION, FLAG_END_HEADERS, 1, b));
        input.extend(frame(0x0, 0x1, 1, b"data"));
        let out = run(input).await;
        assert_eq!(&out[..24], PREFACE);
        let h = headers_of(&out);
        let auth = h.iter().find(|(n, _)| n == b":authority").unwrap();
        assert_eq!(auth.1, b"localhost");
        assert!(
            h.iter()
                .any(|(n, v)| n == b"workload.spiffe.io" && v == b"true")
        );
        assert!(out.ends_with(b"data"), "other frames pass through");
    }

    #[tokio::test]
    async fn a_valid_authority_is_kept_and_garbage_is_refused() {
        let mut enc = loona_hpack::Encoder::new();
        let block = enc.encode(vec![(&b":authority"[..], &b"localhost:1234"[..])]);
        let mut input = PREFACE.to_vec();
        input.extend(frame(FRAME_HEADERS, FLAG_END_HEADERS, 1, &block));
        let h = headers_of(&run(input).await);
        assert_eq!(h[0].1, b"localhost:1234");

        let mut input = PREFACE.to_vec();
        input.extend(frame(FRAME_CONTINUATION, FLAG_END_HEADERS, 1, b"x"));
        let mut out = Vec::new();
        assert!(rewrite(&mut input.as_slice(), &mut out).await.is_err());
        let mut input = PREFACE.to_vec();
        input.extend(frame(
            FRAME_HEADERS,
            FLAG_PADDED | FLAG_END_HEADERS,
            1,
            &[9, 1],
        ));
        let mut out = Vec::new();
        assert!(rewrite(&mut input.as_slice(), &mut out).await.is_err());
    }
}
