//! A TCP relay in front of the Redshift endpoint (the PostgreSQL wire
//! protocol): it forwards bytes both ways until told to refuse, then
//! resets every connection it holds and every new one at once, as an
//! endpoint that is down does.
//!
//! Owns: the listening socket, the relayed connections and their count.
//! Must not: look into the protocol.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use anyhow::Context;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A running relay.
pub struct Relay {
    addr: SocketAddr,
    refusing: Arc<AtomicBool>,
    /// Bumped on each switch to refusing: live connections watch it and close.
    cut: watch::Sender<u64>,
    refused: Arc<AtomicU64>,
    relayed: Arc<AtomicU64>,
    accept: JoinHandle<()>,
}

impl Relay {
    /// Listens on a free loopback port and relays to `upstream`.
    pub async fn start(upstream: String) -> anyhow::Result<Relay> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let refusing = Arc::new(AtomicBool::new(false));
        let refused = Arc::new(AtomicU64::new(0));
        let relayed = Arc::new(AtomicU64::new(0));
        let (cut, _) = watch::channel(0u64);
        let accept = {
            let (refusing, refused, relayed, cut) =
                (Arc::clone(&refusing), Arc::clone(&refused), Arc::clone(&relayed), cut.clone());
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    if refusing.load(Ordering::SeqCst) {
                        refused.fetch_add(1, Ordering::SeqCst);
                        reset(client);
                        continue;
                    }
                    relayed.fetch_add(1, Ordering::SeqCst);
                    let (upstream, mut cut) = (upstream.clone(), cut.subscribe());
                    tokio::spawn(async move {
                        let Ok(mut server) = TcpStream::connect(&upstream).await else { return };
                        let mut client = client;
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                            _ = cut.changed() => reset(client),
                        }
                    });
                }
            })
        };
        Ok(Relay { addr, refusing, cut, refused, relayed, accept })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Refuses (resets) every connection from now on, and cuts the live ones;
    /// or relays again.
    pub fn refuse(&self, on: bool) {
        self.refusing.store(on, Ordering::SeqCst);
        if on {
            self.cut.send_modify(|n| *n += 1);
        }
    }

    /// Connections relayed so far.
    pub fn relayed(&self) -> u64 {
        self.relayed.load(Ordering::SeqCst)
    }

    /// Connections refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::SeqCst)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Closes with a TCP reset (linger 0), as a host with nothing listening answers.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

/// The `host:port` of a `postgres://user@host:port/db?...` URL, and the URL
/// with them replaced by `to`.
pub fn redirect(url: &str, to: SocketAddr) -> anyhow::Result<(String, String)> {
    let rest = url.strip_prefix("postgres://").or_else(|| url.strip_prefix("postgresql://")).context("not a postgres:// URL")?;
    let scheme_len = url.len() - rest.len();
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let host_start = authority.rfind('@').map_or(0, |i| i + 1);
    let hostport = &authority[host_start..];
    anyhow::ensure!(!hostport.is_empty(), "no host in the Redshift URL");
    let upstream = if hostport.contains(':') { hostport.to_owned() } else { format!("{hostport}:5439") };
    let start = scheme_len + host_start;
    let end = scheme_len + authority_end;
    Ok((upstream, format!("{}{}{}", &url[..start], to, &url[end..])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_is_pointed_at_the_relay_and_keeps_the_rest() {
        let to: SocketAddr = "127.0.0.1:40000".parse().expect("addr");
        let (up, url) = redirect("postgres://postgres@127.0.0.1:15432/cafe?sslmode=disable", to).expect("url");
        assert_eq!(up, "127.0.0.1:15432");
        assert_eq!(url, "postgres://postgres@127.0.0.1:40000/cafe?sslmode=disable");
        let (up, url) = redirect("postgresql://u:p@cluster.example.com/dev", to).expect("url");
        assert_eq!(up, "cluster.example.com:5439");
        assert_eq!(url, "postgresql://u:p@127.0.0.1:40000/dev");
        assert!(redirect("mysql://x", to).is_err());
    }

    #[tokio::test]
    async fn it_relays_then_refuses_then_relays_again() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let echo = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let echo_addr = echo.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 16];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let relay = Relay::start(echo_addr.to_string()).await.expect("relay");
        let roundtrip = |addr: SocketAddr| async move {
            let mut s = TcpStream::connect(addr).await.ok()?;
            s.write_all(b"ping").await.ok()?;
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).await.ok()?;
            Some(buf)
        };
        assert_eq!(roundtrip(relay.addr()).await, Some(*b"ping"));
        let mut held = TcpStream::connect(relay.addr()).await.expect("connect");
        held.write_all(b"a").await.expect("write");
        let mut one = [0u8; 1];
        held.read_exact(&mut one).await.expect("echo");
        relay.refuse(true);
        assert_eq!(roundtrip(relay.addr()).await, None);
        assert!(relay.refused() >= 1);
        let mut rest = Vec::new();
        let cut = tokio::time::timeout(std::time::Duration::from_secs(2), held.read_to_end(&mut rest)).await;
        assert!(matches!(cut, Ok(Ok(0)) | Ok(Err(_))), "the live connection was cut: {cut:?}");
        relay.refuse(false);
        assert_eq!(roundtrip(relay.addr()).await, Some(*b"ping"));
    }
}
