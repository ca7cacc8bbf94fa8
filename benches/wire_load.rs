//! A MongoDB-speaking load for measuring handshake inspection (benches/feature_cost.sh inspect):
//! each connection sends a real pymongo 4.20 hello (with client metadata and a speculative
//! SCRAM saslStart, from tests/fixtures/wire) and then OP_MSG pings, and reads each echo
//! back from the shared loadgen backend in echo mode, through moat.
//!
//!     cargo bench --bench wire_load -- --target 127.0.0.1:PORT [--conns 16] [--secs 5] [--pings 4] [--steady]
//!
//! Without --steady: connect, hello, PINGS pings, close, repeat (connection setup, where
//! inspection does its work). With --steady: CONNS connections ping-pong for SECS after
//! one hello each (the data path after inspection has let go). Prints one key=value line.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HELLO: &[u8] =
    include_bytes!("../tests/fixtures/wire/pymongo-4.20-scram-sha-256/01-client.bin");
const PING: &[u8] =
    include_bytes!("../tests/fixtures/wire/pymongo-4.20-scram-sha-256/05-client.bin");

struct Args {
    target: String,
    conns: usize,
    secs: f64,
    pings: usize,
    steady: bool,
}

fn args() -> Option<Args> {
    let mut a = Args {
        target: String::new(),
        conns: 16,
        secs: 5.0,
        pings: 4,
        steady: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        match k.as_str() {
            "--target" => a.target = it.next()?,
            "--conns" => a.conns = it.next()?.parse().ok()?,
            "--secs" => a.secs = it.next()?.parse().ok()?,
            "--pings" => a.pings = it.next()?.parse().ok()?,
            "--steady" => a.steady = true,
            _ => {}
        }
    }
    (!a.target.is_empty()).then_some(a)
}

/// Sends `msg` and reads the same number of bytes back (the backend echoes).
async fn round_trip(s: &mut TcpStream, msg: &[u8], buf: &mut [u8]) -> std::io::Result<()> {
    s.write_all(msg).await?;
    s.read_exact(&mut buf[..msg.len()]).await?;
    Ok(())
}

async fn session(target: &str, pings: usize, buf: &mut [u8]) -> std::io::Result<u64> {
    let mut s = TcpStream::connect(target).await?;
    s.set_nodelay(true)?;
    // 'E' selects echo mode in the loadgen backend; moat sees it as plaintext.
    s.write_all(b"E").await?;
    round_trip(&mut s, HELLO, buf).await?;
    for _ in 0..pings {
        round_trip(&mut s, PING, buf).await?;
    }
    Ok(1 + pings as u64)
}

fn main() {
    let Some(a) = args() else {
        println!(
            "wire_load: needs --target HOST:PORT (see benches/feature_cost.sh inspect); nothing to do"
        );
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let reqs = Arc::new(AtomicU64::new(0));
        let conns = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let deadline = Instant::now() + Duration::from_secs_f64(a.secs);
        let mut tasks = Vec::new();
        for _ in 0..a.conns {
            let (reqs, conns, errors, target) = (reqs.clone(), conns.clone(), errors.clone(), a.target.clone());
            let (steady, pings) = (a.steady, a.pings);
            tasks.push(tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                if steady {
                    let Ok(mut s) = TcpStream::connect(&target).await else {
                        errors.fetch_add(1, Ordering::Relaxed);
                        return;
                    };
                    let _ = s.set_nodelay(true);
                    let ok = s.write_all(b"E").await.is_ok() && round_trip(&mut s, HELLO, &mut buf).await.is_ok();
                    if !ok {
                        errors.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    conns.fetch_add(1, Ordering::Relaxed);
                    while Instant::now() < deadline {
                        if round_trip(&mut s, PING, &mut buf).await.is_err() {
                            errors.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                        reqs.fetch_add(1, Ordering::Relaxed);
                    }
                } else {
                    while Instant::now() < deadline {
                        match session(&target, pings, &mut buf).await {
                            Ok(n) => {
                                reqs.fetch_add(n, Ordering::Relaxed);
                                conns.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(_) => {
                                errors.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
            }));
        }
        let t0 = Instant::now();
        for t in tasks {
            let _ = t.await;
        }
        let secs = t0.elapsed().as_secs_f64();
        println!(
            "cmd=wire_load mode={} target={} conns={} secs={secs:.2} conns_per_s={:.0} req_per_s={:.0} errors={}",
            if a.steady { "steady" } else { "handshake" },
            a.target,
            a.conns,
            conns.load(Ordering::Relaxed) as f64 / secs,
            reqs.load(Ordering::Relaxed) as f64 / secs,
            errors.load(Ordering::Relaxed)
        );
    });
}
