// A __DEPTH__-deep chain of directories in the job's directory (shutil.rmtree recursed on it).
fn main() {
    let mut depth = 0usize;
    for _ in 0..__DEPTH__ {
        if std::fs::create_dir("d").is_err() || std::env::set_current_dir("d").is_err() { break; }
        depth += 1;
    }
    std::fs::write("bottom.txt", b"deep").ok();
    println!("depth {}", depth);
}
