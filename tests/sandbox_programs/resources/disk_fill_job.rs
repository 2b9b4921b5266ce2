// Fills the job's own directory with 1 MiB files until something refuses: the job's tmpfs cap (256 MiB
// by default), not the host's disk.
use std::io::Write;

fn main() {
    let block = vec![7u8; 1 << 20];
    let mut written = 0usize;
    for i in 0..4096 {
        let mut f = match std::fs::File::create(format!("fill-{}", i)) { Ok(f) => f, Err(_) => break };
        if f.write_all(&block).is_err() { break; }
        written += 1;
    }
    println!("wrote {} MiB", written);
}
