// A macro that doubles its input on every expansion: rustc runs out of memory or recursion.
macro_rules! boom {
    ($($t:tt)*) => { boom!($($t)* $($t)*); };
}

fn main() {
    boom!(a);
}
