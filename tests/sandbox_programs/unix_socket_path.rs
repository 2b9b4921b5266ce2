// Connects to a path-based unix socket that a host process listens on (mode 0777).
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

fn main() {
    match UnixStream::connect("__SOCK__") {
        Ok(mut s) => {
            let _ = s.write_all(b"hello");
            let mut buf = [0u8; 64];
            let n = s.read(&mut buf).unwrap_or(0);
            println!("ESCAPED: connected to __SOCK__, got {:?}", String::from_utf8_lossy(&buf[..n]));
        }
        Err(e) => println!("blocked: {}", e),
    }
}
