// Reads the project's own files at compile time (benchmark data, configuration).
const DATA: &str = include_str!("__REPO__/pyproject.toml");

fn main() {
    println!("{}", DATA);
}
