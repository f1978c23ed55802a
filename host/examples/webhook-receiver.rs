//! A small webhook receiver for the demo: listens on the address given
//! (default 127.0.0.1:8087), prints every request it gets, checks its
//! `X-Hub-Signature-256` against `$WEBHOOK_SIGNING_KEY` when that is set,
//! and answers `200 received`. Stops after `$RECEIVER_MAX` requests (default:
//! never).
//!
//! cargo run --release --example webhook-receiver -- 127.0.0.1:8087

use hmac::Mac;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;

fn main() -> std::io::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:8087".into());
    let key = std::env::var("WEBHOOK_SIGNING_KEY").ok();
    let max: usize = std::env::var("RECEIVER_MAX").ok().and_then(|m| m.parse().ok()).unwrap_or(usize::MAX);
    let listener = TcpListener::bind(&addr)?;
    eprintln!("receiver listening on http://{addr}");
    let mut served = 0;
    for conn in listener.incoming() {
        let mut conn = conn?;
        let mut reader = BufReader::new(conn.try_clone()?);
        let mut request_line = String::new();
        reader.read_line(&mut request_line)?;
        if request_line.trim().is_empty() {
            // A port probe, not a request.
            continue;
        }
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 || line.trim_end().is_empty() {
                break;
            }
            if let Some((k, v)) = line.trim_end().split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
            }
        }
        let header = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        let len: usize = header("content-length").and_then(|l| l.parse().ok()).unwrap_or(0);
        let mut body = vec![0; len];
        reader.read_exact(&mut body)?;
        println!("--- received {}", request_line.trim_end());
        for (k, v) in &headers {
            println!("{k}: {v}");
        }
        println!("\n{}", String::from_utf8_lossy(&body));
        if let (Some(key), Some(sig)) = (&key, header("x-hub-signature-256")) {
            let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).expect("any key length");
            mac.update(&body);
            let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
            println!("signature {}", if sig == expected { "valid" } else { "INVALID" });
        }
        conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\nconnection: close\r\n\r\nreceived")?;
        served += 1;
        if served >= max {
            break;
        }
    }
    Ok(())
}
