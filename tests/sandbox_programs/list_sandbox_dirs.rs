// Looks for the sandbox's directories and the other jobs' work dirs in the host's /tmp.
use std::fs;

fn main() {
    let mut found = 0;
    for base in ["/tmp", "/var/tmp", "/var/cache/rustcoder"] {
        if let Ok(list) = fs::read_dir(base) {
            for entry in list.flatten() {
                let name = entry.file_name().to_string_lossy().to_string();
                if name.starts_with("rustcoder") {
                    found += 1;
                    println!("ESCAPED: sees {}/{}", base, name);
                    if let Ok(inner) = fs::read_dir(entry.path()) {
                        for e in inner.flatten() {
                            println!("ESCAPED: lists {}", e.path().display());
                        }
                    }
                }
            }
        }
    }
    println!("found {}", found);
}
