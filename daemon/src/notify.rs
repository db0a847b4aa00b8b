//! The systemd notify protocol (`sd_notify(3)`): `READY=1` once the sources
//! are connected, `WATCHDOG=1` from the health loop, `STOPPING=1` when the
//! drain begins, and `STATUS=` lines for `systemctl status`.
//!
//! Owns: the datagram socket named by `NOTIFY_SOCKET` (a path, or `@name`
//! for the abstract namespace) and the watchdog interval from
//! `WATCHDOG_USEC` (pinged at half of it, as systemd recommends). Without
//! `NOTIFY_SOCKET` (not under systemd, or `Type=simple`) every call is a
//! no-op. Must not: decide when the daemon is ready or healthy (topology
//! and the health loop do).

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Where notifications go, if anywhere.
#[derive(Debug)]
pub struct Notifier {
    socket: Option<(UnixDatagram, String)>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// From the process environment.
    pub fn from_env() -> Self {
        Self::new(std::env::var("NOTIFY_SOCKET").ok(), std::env::var("WATCHDOG_USEC").ok())
    }

    /// From the values of `NOTIFY_SOCKET` and `WATCHDOG_USEC`.
    pub fn new(notify_socket: Option<String>, watchdog_usec: Option<String>) -> Self {
        // Non-blocking: a datagram socket's queue is short (net.unix.max_dgram_qlen,
        // 10 by default), and a reader that stops reading must not stall a
        // runtime worker; a full queue drops the notification instead.
        let socket = notify_socket
            .filter(|s| !s.is_empty())
            .and_then(|path| UnixDatagram::unbound().ok().filter(|s| s.set_nonblocking(true).is_ok()).map(|s| (s, path)));
        let watchdog = watchdog_usec.and_then(|u| u.parse::<u64>().ok()).filter(|u| *u > 0).map(Duration::from_micros);
        Notifier { socket, watchdog }
    }

    /// Whether systemd is listening.
    pub fn enabled(&self) -> bool {
        self.socket.is_some()
    }

    /// How often to send `WATCHDOG=1`: half the configured watchdog time.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.map(|w| w / 2)
    }

    /// Sends one notification (newline-separated `KEY=VALUE` lines). It
    /// never blocks: when the reader's queue is full the notification is
    /// dropped (a watchdog ping comes again at half the watchdog time);
    /// failures are logged and otherwise ignored (systemd then acts on its
    /// timeouts).
    pub fn send(&self, state: &str) {
        let Some((socket, path)) = &self.socket else { return };
        let result = if let Some(name) = path.strip_prefix('@') {
            send_abstract(socket, name.as_bytes(), state.as_bytes())
        } else {
            socket.send_to(state.as_bytes(), path).map(|_| ())
        };
        match result {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                tracing::debug!("systemd's notify queue is full; notification dropped");
            }
            Err(e) => tracing::warn!(error = %e, "systemd notification failed"),
        }
    }

    /// `READY=1` with a status line.
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={status}"));
    }

    /// `STOPPING=1` with a status line, and `EXTEND_TIMEOUT_USEC=` so that
    /// systemd waits `at_least` from now for the process to stop, whatever
    /// the unit's `TimeoutStopSec`.
    pub fn stopping(&self, status: &str, at_least: Duration) {
        self.send(&format!("STOPPING=1\nSTATUS={status}\nEXTEND_TIMEOUT_USEC={}", at_least.as_micros()));
    }

    /// `WATCHDOG=1`, when systemd's watchdog is on (`WATCHDOG_USEC`).
    pub fn watchdog(&self) {
        if self.watchdog.is_some() {
            self.send("WATCHDOG=1");
        }
    }
}

#[cfg(target_os = "linux")]
fn send_abstract(socket: &UnixDatagram, name: &[u8], data: &[u8]) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
    socket.send_to_addr(data, &addr).map(|_| ())
}

#[cfg(not(target_os = "linux"))]
fn send_abstract(_: &UnixDatagram, _: &[u8], _: &[u8]) -> std::io::Result<()> {
    Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "abstract sockets are Linux only"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_reach_a_path_socket_and_the_watchdog_runs_at_half() {
        let dir = std::env::temp_dir().join(format!("cafe-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixDatagram::bind(&path).expect("bind");
        let n = Notifier::new(Some(path.display().to_string()), Some("2000000".into()));
        assert!(n.enabled());
        assert_eq!(n.watchdog_interval(), Some(Duration::from_secs(1)));
        n.ready("consuming");
        n.watchdog();
        let mut buf = [0u8; 256];
        let len = listener.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=consuming");
        let len = listener.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..len], b"WATCHDOG=1");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn abstract_sockets_work_and_no_socket_is_a_no_op() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("cafe-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).expect("addr");
        let listener = UnixDatagram::bind_addr(&addr).expect("bind abstract");
        Notifier::new(Some(format!("@{name}")), None).stopping("draining", Duration::from_secs(45));
        let mut buf = [0u8; 128];
        let len = listener.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..len], b"STOPPING=1\nSTATUS=draining\nEXTEND_TIMEOUT_USEC=45000000");
        let off = Notifier::new(None, Some("1000".into()));
        assert!(!off.enabled());
        off.ready("nobody listens");
    }

    #[test]
    fn a_reader_that_stops_reading_never_blocks_the_sender() {
        let dir = std::env::temp_dir().join(format!("cafe-notify-full-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let _listener = UnixDatagram::bind(&path).expect("bind");
        let n = Notifier::new(Some(path.display().to_string()), Some("400000".into()));
        // Far more than the socket's queue holds, none of them read.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for _ in 0..1000 {
                n.watchdog();
            }
            let _ = tx.send(());
        });
        assert!(rx.recv_timeout(Duration::from_secs(10)).is_ok(), "sending to a full notify socket blocked");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
