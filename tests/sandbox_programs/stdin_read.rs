// Reads stdin (must be empty, not the evaluator's terminal or pipe).
use std::io::Read;

fn main() {
    let mut buf = Vec::new();
    let n = std::io::stdin().read_to_end(&mut buf).unwrap_or(0);
    println!("stdin bytes: {}", n);
}
