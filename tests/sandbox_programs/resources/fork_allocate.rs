// Six processes each allocate and touch 400 MiB (each under the per-process address-space limit); the parent
// prints the most its children held at once, by their reports and by the kernel's RssAnon.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc::{channel, RecvTimeoutError};
use std::time::{Duration, Instant};

// The parent starts N copies of itself and adds up what the live ones report holding (MiB): the most
// memory the job's process tree held at once. A child that dies (its memory freed) counts 0; one that
// dies between its last report and the parent's look can be counted once more (a report's worth of slack).
fn parent(n: usize) {
    let (tx, rx) = channel();
    let mut kids = vec![];
    for i in 0..n {
        let mut c = match Command::new("/proc/self/exe").arg(i.to_string()).stdout(Stdio::piped()).spawn() {
            Ok(c) => c,
            Err(e) => { println!("spawn failed: {}", e); break; }
        };
        let out = c.stdout.take().unwrap();
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().flatten() {
                if let Ok(v) = line.trim().parse::<usize>() { tx.send((i, v)).ok(); }
            }
            tx.send((i, usize::MAX)).ok();
        });
        kids.push(c);
    }
    drop(tx);
    let n = kids.len();
    let mut held = vec![0usize; n];
    let (mut max_sum, mut ended) = (0usize, 0usize);
    let deadline = Instant::now() + Duration::from_secs(6);
    let mut rss_max = 0usize;
    while ended < n && Instant::now() < deadline {
        // what the kernel says the live children hold right now (RssAnon), summed over one pass
        let mut rss = 0usize;
        for c in kids.iter() {
            let status = std::fs::read_to_string(format!("/proc/{}/status", c.id())).unwrap_or_default();
            for line in status.lines().filter(|l| l.starts_with("RssAnon:")) {
                rss += line.split_whitespace().nth(1).and_then(|k| k.parse::<usize>().ok()).unwrap_or(0) >> 10;
            }
        }
        rss_max = rss_max.max(rss);
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok((i, usize::MAX)) => { held[i] = 0; ended += 1; }
            Ok((i, v)) => {
                held[i] = v;
                for (k, c) in kids.iter_mut().enumerate() {  // a child killed meanwhile holds nothing
                    if let Ok(Some(_)) = c.try_wait() { held[k] = 0; }
                }
                max_sum = max_sum.max(held.iter().sum());
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(_) => break,
        }
    }
    println!("held_max={} MiB", max_sum);
    println!("rss_max={} MiB", rss_max);
    std::io::stdout().flush().ok();
    for c in kids.iter_mut() { c.kill().ok(); c.wait().ok(); }
}

fn report(mib: usize) {
    println!("{}", mib);
    std::io::stdout().flush().ok();
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() > 1 { child(); std::thread::sleep(Duration::from_secs(30)); return; }
    parent(6);
}

fn child() {
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    for i in 0..25 {
        let mut b = vec![0u8; 16 << 20];
        for j in (0..b.len()).step_by(4096) { b[j] = i as u8 + 1; }
        blocks.push(b);
        report(blocks.len() * 16);
    }
    std::thread::sleep(Duration::from_secs(30));
    println!("{}", blocks.len());
}
