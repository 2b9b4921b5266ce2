// Fills /tmp with 1 MiB files until something refuses (the host disk must not be touched).
use std::io::Write;

fn main() {
    let block = vec![7u8; 1 << 20];
    let mut written = 0usize;
    for i in 0..4096 {
        let path = format!("/tmp/rcpwn-__TOKEN__-{}", i);
        let mut f = match std::fs::File::create(&path) { Ok(f) => f, Err(_) => break };
        if f.write_all(&block).is_err() { break; }
        written += 1;
    }
    println!("wrote {} MiB", written);
}
