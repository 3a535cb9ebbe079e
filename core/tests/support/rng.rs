//! The model-based tests' random source and run settings.
#![allow(dead_code)]

/// splitmix64: small, seedable, good enough to pick operations.
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// A number below `n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    /// True `p` times in 100.
    pub fn percent(&mut self, p: u64) -> bool {
        self.next() % 100 < p
    }
}

/// A number from the environment (`RTQ_MODEL_SEED`, `RTQ_MODEL_STEPS`).
pub fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// The run's seed: `RTQ_MODEL_SEED`, or the clock's nanoseconds.
pub fn seed() -> u64 {
    env_number("RTQ_MODEL_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    })
}
