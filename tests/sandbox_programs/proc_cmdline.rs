// Prints the command line of every process it can see (host processes' arguments hold secrets).
use std::fs;

fn main() {
    let mut n = 0;
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let pid = entry.file_name().to_string_lossy().to_string();
        if !pid.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        n += 1;
        if let Ok(cmd) = fs::read(format!("/proc/{}/cmdline", pid)) {
            println!("{}: {}", pid, String::from_utf8_lossy(&cmd).replace('\0', " "));
        }
    }
    println!("processes visible: {}", n);
}
