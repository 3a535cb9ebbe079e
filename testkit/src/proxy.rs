//! A TCP fault-injection proxy between a client and a test redis-server.
//!
//! [`Proxy::start`] listens on `127.0.0.1:0` and forwards every connection
//! to the server. It counts the RESP requests and replies of each
//! connection, so faults can be aimed at one command:
//! [`Proxy::cut_reply_to`] lets the next request containing a byte pattern
//! through (Redis executes it), drops its reply and cuts that connection,
//! which is what a lost reply looks like to a client.
//! [`Proxy::black_hole_after`] lets the next matching request through and
//! then silently drops everything on that connection, both ways, while
//! keeping it open: the client only notices by timing out (a network black
//! hole). [`Proxy::cut_all`] closes every open connection at once.
//!
//! # Examples
//! ```no_run
//! # async fn demo() {
//! use rtq_testkit::{Proxy, RedisServer};
//! let redis = RedisServer::start();
//! let proxy = Proxy::start(redis.port()).await;
//! proxy.cut_reply_to(b"rtq2_submit");
//! // A client connected to proxy.url() now loses its next submit's reply.
//! # }
//! ```

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

/// A running proxy; stops (closing every connection) on drop.
pub struct Proxy {
    port: u16,
    control: Arc<Control>,
    accept: AbortHandle,
}

/// What happens at the reply to a matching request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// Drop the reply and close the connection.
    Cut,
    /// Drop the reply and everything after it, both ways; stay open.
    BlackHole,
}

/// What the connections share with the test.
#[derive(Default)]
struct Control {
    /// The armed fault: the next request containing this pattern.
    armed: Mutex<Option<(Vec<u8>, Fault)>>,
    /// Cuts performed so far.
    cuts: AtomicU64,
    /// Connections gone dark so far.
    black_holes: AtomicU64,
    /// Connections accepted so far.
    accepted: AtomicU64,
    /// The tasks serving open connections.
    connections: Mutex<Vec<AbortHandle>>,
}

/// Per-connection state shared by its two directions.
#[derive(Default)]
struct Conn {
    /// Index (0-based, in request order) of the request at whose reply the
    /// fault strikes, and the fault.
    fault_at: Mutex<Option<(u64, Fault)>>,
    /// Gone dark: nothing is forwarded any more, either way.
    dark: std::sync::atomic::AtomicBool,
}

impl Proxy {
    /// Starts a proxy to the redis-server on `127.0.0.1:<upstream_port>`.
    /// Must be called inside a tokio runtime.
    ///
    /// # Panics
    /// If it cannot bind a local port.
    pub async fn start(upstream_port: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("the proxy cannot bind 127.0.0.1:0");
        let port = listener.local_addr().expect("bound address").port();
        let upstream: SocketAddr = ([127, 0, 0, 1], upstream_port).into();
        let control = Arc::new(Control::default());
        let accept = tokio::spawn(accept_loop(listener, upstream, Arc::clone(&control)));
        Proxy {
            port,
            control,
            accept: accept.abort_handle(),
        }
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>/` (a server without a password).
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Arms a one-shot fault: the next request (on any connection) whose
    /// bytes contain `pattern` is forwarded and executed by Redis, but its
    /// reply is dropped and that connection is closed. Replies to earlier
    /// requests on the connection still arrive.
    pub fn cut_reply_to(&self, pattern: &[u8]) {
        *self.control.armed.lock().unwrap() = Some((pattern.to_vec(), Fault::Cut));
    }

    /// Arms a one-shot black hole: the next request (on any connection)
    /// whose bytes contain `pattern` is forwarded and executed by Redis;
    /// from its reply on, nothing more is forwarded on that connection in
    /// either direction, and it stays open until [`Proxy::cut_all`].
    pub fn black_hole_after(&self, pattern: &[u8]) {
        *self.control.armed.lock().unwrap() = Some((pattern.to_vec(), Fault::BlackHole));
    }

    /// Cuts performed so far (armed cuts that hit a request).
    pub fn cuts(&self) -> u64 {
        self.control.cuts.load(Ordering::Acquire)
    }

    /// Connections gone dark so far (armed black holes that hit).
    pub fn black_holes(&self) -> u64 {
        self.control.black_holes.load(Ordering::Acquire)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.control.accepted.load(Ordering::Acquire)
    }

    /// Closes every open connection now (new ones are still accepted).
    pub fn cut_all(&self) {
        for conn in self.control.connections.lock().unwrap().drain(..) {
            conn.abort();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut_all();
    }
}

async fn accept_loop(listener: TcpListener, upstream: SocketAddr, control: Arc<Control>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        control.accepted.fetch_add(1, Ordering::AcqRel);
        let Ok(server) = TcpStream::connect(upstream).await else {
            // The server is down: the client sees its connection closed.
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let task = tokio::spawn(serve(client, server, Arc::clone(&control)));
        let mut open = control.connections.lock().unwrap();
        open.retain(|c| !c.is_finished());
        open.push(task.abort_handle());
    }
}

/// Forwards both directions until either side closes or a cut happens;
/// returning drops (closes) both sockets.
async fn serve(client: TcpStream, server: TcpStream, control: Arc<Control>) {
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let conn = Conn::default();
    tokio::select! {
        _ = requests(client_read, server_write, &control, &conn) => {}
        _ = replies(server_read, client_write, &control, &conn) => {}
    }
}

/// Client to server: forwards bytes as they come (none once the
/// connection went dark), counting complete requests and arming the
/// connection's fault on a matching one.
async fn requests(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, control: &Control, conn: &Conn) {
    let mut pending = Vec::new();
    let mut count = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        pending.extend_from_slice(&buf[..n]);
        // Mark before forwarding: Redis cannot answer a request it has
        // not fully received.
        while let Some(len) = resp_len(&pending) {
            let request: Vec<u8> = pending.drain(..len).collect();
            let mut armed = control.armed.lock().unwrap();
            if let Some((pattern, fault)) = armed.as_ref() {
                if contains(&request, pattern) {
                    *conn.fault_at.lock().unwrap() = Some((count, *fault));
                    *armed = None;
                }
            }
            count += 1;
        }
        if conn.dark.load(Ordering::Acquire) {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Server to client: forwards complete replies; at the marked one, drops
/// it and returns (cutting the connection) or goes dark (reading and
/// dropping everything after).
async fn replies(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, control: &Control, conn: &Conn) {
    let mut pending = Vec::new();
    let mut count = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if conn.dark.load(Ordering::Acquire) {
            continue;
        }
        pending.extend_from_slice(&buf[..n]);
        let mut forward = 0;
        while let Some(len) = resp_len(&pending[forward..]) {
            let fault = match *conn.fault_at.lock().unwrap() {
                Some((at, fault)) if at == count => Some(fault),
                _ => None,
            };
            if let Some(fault) = fault {
                if forward > 0 && to.write_all(&pending[..forward]).await.is_err() {
                    return;
                }
                match fault {
                    Fault::Cut => {
                        control.cuts.fetch_add(1, Ordering::AcqRel);
                        return;
                    }
                    Fault::BlackHole => {
                        conn.dark.store(true, Ordering::Release);
                        control.black_holes.fetch_add(1, Ordering::AcqRel);
                        pending.clear();
                        forward = 0;
                        break;
                    }
                }
            }
            forward += len;
            count += 1;
        }
        if forward > 0 {
            if to.write_all(&pending[..forward]).await.is_err() {
                return;
            }
            pending.drain(..forward);
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// Length of the first complete RESP2/RESP3 value in `buf`, or `None` if
/// it is incomplete (or not RESP: then it is never counted).
fn resp_len(buf: &[u8]) -> Option<usize> {
    let mut pos = 0;
    let mut remaining = 1u64; // values still to read
    while remaining > 0 {
        remaining -= 1;
        let line_end = pos + buf.get(pos..)?.windows(2).position(|w| w == b"\r\n")?;
        let kind = *buf.get(pos)?;
        let header = std::str::from_utf8(&buf[pos + 1..line_end]).ok()?;
        pos = line_end + 2;
        match kind {
            // Simple line types.
            b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => {}
            // Blob types: length, then that many bytes and CRLF.
            b'$' | b'!' | b'=' => {
                let len: i64 = header.parse().ok()?;
                if len >= 0 {
                    pos += len as usize + 2;
                    if pos > buf.len() {
                        return None;
                    }
                }
            }
            // Aggregates of N values.
            b'*' | b'~' | b'>' => {
                let len: i64 = header.parse().ok()?;
                if len > 0 {
                    remaining += len as u64;
                }
            }
            // Maps and attributes: N pairs.
            b'%' | b'|' => {
                let len: i64 = header.parse().ok()?;
                if len > 0 {
                    remaining += 2 * len as u64;
                }
                if kind == b'|' {
                    // An attribute precedes the value it describes.
                    remaining += 1;
                }
            }
            _ => return None,
        }
    }
    Some(pos)
}

#[cfg(test)]
mod tests {
    use super::resp_len;

    #[test]
    fn resp_values_are_measured_only_when_complete() {
        let cmd = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n";
        assert_eq!(resp_len(cmd), Some(cmd.len()));
        for cut in 0..cmd.len() {
            assert_eq!(resp_len(&cmd[..cut]), None, "prefix of {cut} bytes");
        }
        let two = [&cmd[..], b"+OK\r\n"].concat();
        assert_eq!(resp_len(&two), Some(cmd.len()));
        assert_eq!(resp_len(b"$-1\r\n"), Some(5));
        assert_eq!(resp_len(b"*-1\r\n"), Some(5));
        assert_eq!(resp_len(b"-ERR x\r\n"), Some(8));
        assert_eq!(resp_len(b"*0\r\n"), Some(4));
        let nested = b"*2\r\n*1\r\n:1\r\n$2\r\nab\r\n";
        assert_eq!(resp_len(nested), Some(nested.len()));
        let map = b"%1\r\n+a\r\n:2\r\n";
        assert_eq!(resp_len(map), Some(map.len()));
        // Binary payloads may contain CRLF.
        let bin = b"$4\r\n\r\n\r\n\r\n";
        assert_eq!(resp_len(bin), Some(bin.len()));
    }
}
