// Walks /proc/*/cwd and /proc/*/root looking for another job's directory, and tries to plant a
// file there (the attack that changed another job's output when jobs shared the host's /proc).
use std::fs;

fn main() {
    let me = std::process::id().to_string();
    let mut seen = 0;
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let pid = entry.file_name().to_string_lossy().to_string();
        if !pid.chars().all(|c| c.is_ascii_digit()) || pid == me {
            continue;
        }
        seen += 1;
        for link in ["cwd", "root"] {
            let path = format!("/proc/{}/{}", pid, link);
            if let Ok(target) = fs::read_link(&path) {
                println!("link {} -> {}", path, target.display());
            }
            if let Ok(list) = fs::read_dir(&path) {
                let names: Vec<_> = list.flatten().map(|e| e.file_name()).collect();
                println!("ESCAPED: listed {} ({} entries)", path, names.len());
            }
            if fs::write(format!("{}/planted-__TOKEN__", path), b"x").is_ok() {
                println!("ESCAPED: wrote into {}", path);
            }
        }
    }
    println!("other pids visible: {}", seen);
}
