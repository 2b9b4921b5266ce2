// Prints what the job's init, its environment and its cwd say: no host path may show.
fn main() {
    let cmd = std::fs::read("/proc/1/cmdline").unwrap_or_default();
    println!("cmdline: {}", String::from_utf8_lossy(&cmd).replace('\0', " "));
    match std::fs::read("/proc/1/environ") {
        Ok(e) => println!("ENVIRON: {}", String::from_utf8_lossy(&e).replace('\0', " ")),
        Err(e) => println!("environ unreadable: {}", e),
    }
    println!("cwd: {:?}", std::env::current_dir().ok());
    for (k, v) in std::env::vars() { println!("env {}={}", k, v); }
    println!("exe: {:?}", std::fs::read_link("/proc/self/exe").ok());
}
