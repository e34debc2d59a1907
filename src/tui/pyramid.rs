//! Min/max summaries of a growing series at power-of-two block sizes, so a chart of a long run
//! costs O(columns) per frame instead of O(steps): each column is one block of the right level.

/// Summary of one block of steps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Block {
    pub min: f64,
    pub max: f64,
    /// Smallest positive value (what a log axis shows as the minimum).
    pub min_pos: f64,
    pub nonfinite: u32,
}

impl Block {
    const EMPTY: Block = Block {
        min: f64::INFINITY,
        max: f64::NEG_INFINITY,
        min_pos: f64::INFINITY,
        nonfinite: 0,
    };

    fn merge(&mut self, o: &Block) {
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
        self.min_pos = self.min_pos.min(o.min_pos);
        self.nonfinite += o.nonfinite;
    }

    fn add(&mut self, v: f64) {
        if v.is_finite() {
            self.min = self.min.min(v);
            self.max = self.max.max(v);
            if v > 0.0 {
                self.min_pos = self.min_pos.min(v);
            }
        } else {
            self.nonfinite += 1;
        }
    }
}

/// Smallest block summarised; shorter views are scanned directly.
pub const BASE_SHIFT: u32 = 6;

/// The levels of one series: level j holds the complete blocks of `1 << (BASE_SHIFT + j)` steps;
/// the steps after the last complete block of level 0 are in `tail`. A push touches the tail, and
/// once every 64 steps carries complete blocks upward, so it costs O(1) amortised.
#[derive(Debug, Clone)]
pub struct Pyramid {
    levels: Vec<Vec<Block>>,
    tail: Block,
    /// Every value pushed, as one block.
    whole: Block,
    len: usize,
}

impl Default for Pyramid {
    fn default() -> Self {
        Self {
            levels: Vec::new(),
            tail: Block::EMPTY,
            whole: Block::EMPTY,
            len: 0,
        }
    }
}

impl Pyramid {
    /// Values pushed so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing was pushed yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The smallest finite value pushed (+inf for none).
    pub fn min(&self) -> f64 {
        self.whole.min
    }

    /// Appends a value, merging full blocks into the level above.
    pub fn push(&mut self, v: f64) {
        self.whole.add(v);
        self.tail.add(v);
        self.len += 1;
        if !self.len.is_multiple_of(1 << BASE_SHIFT) {
            return;
        }
        let mut carry = std::mem::replace(&mut self.tail, Block::EMPTY);
        for j in 0.. {
            if self.levels.len() == j {
                self.levels.push(Vec::new());
            }
            let level = &mut self.levels[j];
            level.push(carry);
            if !level.len().is_multiple_of(2) {
                break;
            }
            carry = level[level.len() - 2];
            carry.merge(&level[level.len() - 1]);
        }
    }

    /// Blocks of the smallest size that covers `0..len` in at most `columns` blocks (the last
    /// one partial), with that size; None when the series is short enough to scan.
    pub fn blocks(&self, columns: usize) -> Option<(usize, Vec<Block>)> {
        if self.len < columns.max(1) << BASE_SHIFT {
            return None;
        }
        let j = (0..self.levels.len())
            .find(|&j| self.len.div_ceil(1 << (BASE_SHIFT + j as u32)) <= columns.max(1))?;
        let mut out = self.levels[j].clone();
        // What the complete blocks of level j leave out: at most one block from each level below.
        let mut partial = self.tail;
        for k in 0..j {
            let covered = self.levels.get(k + 1).map_or(0, |l| l.len() * 2);
            for b in &self.levels[k][covered.min(self.levels[k].len())..] {
                partial.merge(b);
            }
        }
        if out.len() * (1 << (BASE_SHIFT + j as u32)) < self.len {
            out.push(partial);
        }
        Some((1 << (BASE_SHIFT + j as u32), out))
    }
}

/// TensorBoard's debiased EMA, one value at a time.
#[derive(Debug, Clone, Copy)]
pub struct Ema {
    last: f64,
    /// `weight^n` after n values, kept as a product: `powi` per value was a sixth of the UI
    /// thread's time with 30 files playing.
    decay: f64,
}

impl Default for Ema {
    fn default() -> Self {
        Self {
            last: 0.0,
            decay: 1.0,
        }
    }
}

impl Ema {
    /// The debiased average after `v` (non-finite values pass through and are not averaged).
    pub fn next(&mut self, v: f64, weight: f64) -> f64 {
        if !v.is_finite() {
            return v;
        }
        self.last = self.last * weight + (1.0 - weight) * v;
        self.decay *= weight;
        self.last / (1.0 - self.decay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_summarise_exactly_what_they_cover() {
        let mut p = Pyramid::default();
        let v: Vec<f64> = (0..10_000)
            .map(|k| ((k * 7919) % 1000) as f64 - 500.0)
            .collect();
        for &x in &v {
            p.push(x);
        }
        assert_eq!(p.min(), -500.0);
        let (size, blocks) = p.blocks(50).unwrap();
        assert_eq!(size, 256);
        assert_eq!(blocks.len(), 10_000usize.div_ceil(256));
        for (b, block) in blocks.iter().enumerate() {
            let chunk = &v[b * size..((b + 1) * size).min(v.len())];
            assert_eq!(
                block.min,
                chunk.iter().copied().fold(f64::INFINITY, f64::min)
            );
            assert_eq!(
                block.max,
                chunk.iter().copied().fold(f64::NEG_INFINITY, f64::max)
            );
        }
    }

    #[test]
    fn every_length_and_width_matches_a_direct_scan() {
        let v: Vec<f64> = (0..5_000)
            .map(|k| ((k * 7919) % 997) as f64 - 400.0)
            .collect();
        let mut p = Pyramid::default();
        for (n, &x) in v.iter().enumerate() {
            p.push(x);
            for columns in [1, 3, 7, 20] {
                let Some((size, blocks)) = p.blocks(columns) else {
                    continue;
                };
                assert!(blocks.len() <= columns, "len {} columns {columns}", n + 1);
                assert_eq!(blocks.len(), (n + 1).div_ceil(size));
                for (b, block) in blocks.iter().enumerate() {
                    let chunk = &v[b * size..((b + 1) * size).min(n + 1)];
                    assert_eq!(
                        block.max,
                        chunk.iter().copied().fold(f64::NEG_INFINITY, f64::max)
                    );
                    assert_eq!(
                        block.min,
                        chunk.iter().copied().fold(f64::INFINITY, f64::min)
                    );
                }
            }
        }
    }

    #[test]
    fn short_series_are_scanned_not_summarised() {
        let mut p = Pyramid::default();
        for k in 0..50 {
            p.push(k as f64);
        }
        assert!(p.blocks(100).is_none());
    }
}
