// Looks for a secret in its environment, at run time and at compile time.
fn main() {
    println!("runtime={:?}", std::env::var("RUSTCODER_SECRET").ok());
    println!("compiletime={:?}", option_env!("RUSTCODER_SECRET"));
    for (k, v) in std::env::vars() {
        println!("{}={}", k, v);
    }
}
