// Thousands of compile errors: the compiler's output is capped, the verdict stays compile_error.
macro_rules! many {
    () => {};
    ($head:tt $($tail:tt)*) => { let _: u8 = "not a number"; many!($($tail)*); };
}

fn main() {
    many!(a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a
          a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a);
}
