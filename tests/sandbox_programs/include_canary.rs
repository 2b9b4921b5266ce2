// Reads a world-readable host file at compile time.
const SECRET: &str = include_str!("__CANARY_FILE__");

fn main() {
    println!("{}", SECRET);
}
