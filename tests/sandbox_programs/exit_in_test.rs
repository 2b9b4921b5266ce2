// A test that calls process::exit(0) before libtest can report: must not count as a pass.
pub fn answer() -> u32 {
    41
}

#[cfg(test)]
mod tests {
    #[test]
    fn cheats() {
        std::process::exit(0);
    }

    #[test]
    fn wrong() {
        assert_eq!(super::answer(), 42);
    }
}
