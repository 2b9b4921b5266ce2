// Writes to stdout as fast as it can, forever.
use std::io::Write;

fn main() {
    let line = [b'A'; 1023];
    let mut out = std::io::stdout().lock();
    loop {
        let _ = out.write_all(&line);
        let _ = out.write_all(b"\n");
    }
}
