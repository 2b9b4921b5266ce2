// Never finishes compiling: an unbounded loop in const evaluation.
#![allow(long_running_const_eval)]
const X: u64 = {
    let mut i = 0u64;
    let mut s = 0u64;
    while i < u64::MAX {
        s = s.wrapping_add(i);
        i += 1;
    }
    s
};

fn main() {
    println!("{}", X);
}
