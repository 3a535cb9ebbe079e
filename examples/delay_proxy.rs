//! A TCP proxy that delays every byte by a fixed one-way delay in each
//! direction, to show the round-trip structure of a protocol on one machine.
//! `rtt_ms = 18` means 9 ms each way. Bytes keep their order; bytes read
//! together are released together at `read time + delay`.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Starts the proxy on 127.0.0.1 (any free port) in front of `upstream`;
/// returns its address. Runs until the process ends.
pub async fn start(upstream: SocketAddr, rtt: Duration) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let one_way = rtt / 2;
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(server) = TcpStream::connect(upstream).await {
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::spawn(pipe(cr, sw, one_way));
                    tokio::spawn(pipe(sr, cw, one_way));
                }
            });
        }
    });
    Ok(addr)
}

/// Waits until `due` with sub-millisecond accuracy: tokio's timer has 1 ms
/// resolution and rounds up (about +1 ms per direction), so sleep to just
/// before `due` and yield for the rest.
async fn wait_until(due: Instant) {
    let margin = Duration::from_micros(1500);
    if due > Instant::now() + margin {
        tokio::time::sleep_until(due - margin).await;
    }
    while Instant::now() < due {
        tokio::task::yield_now().await;
    }
}

/// Copies `from` to `to`, releasing each read `delay` after it arrived.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let writer = tokio::spawn(async move {
        while let Some((due, bytes)) = rx.recv().await {
            wait_until(due).await;
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    });
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tx
                    .send((Instant::now() + delay, buf[..n].to_vec()))
                    .is_err()
                {
                    break;
                }
            }
        }
    }
    drop(tx);
    let _ = writer.await;
}
