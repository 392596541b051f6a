//! A fixed set of small integers, a bit each: the slots a compile has
//! seen taken, the buckets protected prefixes touch.

pub struct Bits(Vec<u64>);

impl Bits {
    /// Room for `0..len`.
    pub fn new(len: usize) -> Self {
        Self(vec![0; len.div_ceil(64)])
    }

    /// Adds `n` (beyond the room: nothing).
    pub fn insert(&mut self, n: usize) {
        if let Some(word) = self.0.get_mut(n / 64) {
            *word |= 1 << (n % 64);
        }
    }

    /// How many are held.
    pub fn count(&self) -> usize {
        self.0.iter().map(|word| word.count_ones() as usize).sum()
    }

    pub fn contains(&self, n: usize) -> bool {
        self.0
            .get(n / 64)
            .is_some_and(|word| word & 1 << (n % 64) != 0)
    }
}
