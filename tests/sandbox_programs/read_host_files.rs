// Reads world-readable files outside its directory at run time: the project, benchmark data,
// a canary file in /tmp, system files.
fn main() {
    for path in ["__CANARY_FILE__", "__REPO__/pyproject.toml", "__REPO__/evals/humaneval-rust.yaml",
                 "/etc/passwd", "/etc/hostname", "/etc/os-release", "/proc/1/environ"] {
        match std::fs::read_to_string(path) {
            Ok(text) => println!("read {} ({} bytes): {}", path, text.len(), text),
            Err(e) => println!("denied {}: {}", path, e),
        }
    }
}
