// Writes into a world-writable (1777) directory of the host.
fn main() {
    let path = "__WDIR__/rcpwn-__TOKEN__";
    match std::fs::write(path, b"x") {
        Ok(()) => println!("ESCAPED: wrote {}", path),
        Err(e) => println!("denied {}: {}", path, e),
    }
}
