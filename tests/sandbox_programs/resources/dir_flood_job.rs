// Creates empty directories in the job's directory until refused.
fn main() {
    let mut made = 0usize;
    for i in 0..200_000 {
        if std::fs::create_dir(format!("d{}", i)).is_err() { break; }
        made += 1;
    }
    println!("dirs={}", made);
}
