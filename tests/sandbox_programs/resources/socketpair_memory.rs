// Six processes fill unix socketpair buffers (kernel memory, not counted by RLIMIT_AS) and hold them.

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
    while ended < n && Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(50)) {
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

extern "C" { fn socketpair(d: i32, t: i32, p: i32, sv: *mut i32) -> i32; fn send(fd: i32, b: *const u8, n: usize, f: i32) -> isize; }

fn child() {
    let buf = vec![9u8; 65536];
    let mut total = 0usize;
    let mut last = 0usize;
    for _ in 0..2000 {
        let mut sv = [0i32; 2];
        if unsafe { socketpair(1, 1, 0, sv.as_mut_ptr()) } != 0 { break; }
        loop {
            let n = unsafe { send(sv[0], buf.as_ptr(), buf.len(), 0x40) };  // MSG_DONTWAIT
            if n <= 0 { break; }
            total += n as usize;
        }
        if total >> 20 >= last + 8 { last = total >> 20; report(last); }
    }
    report(total >> 20);
}
