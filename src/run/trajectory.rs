//! Where a run has been, in bounded memory: points at every `stride`-th step, the stride doubling
//! (and every other point dropped) whenever the buffer is full, plus always the latest point.
//! A run of any length keeps between `cap / 2` and `cap` points spread evenly over its steps.

/// Points tagged with the step they were taken at.
#[derive(Debug, Clone)]
pub struct Decimated<T> {
    points: Vec<(u64, T)>,
    last: Option<(u64, T)>,
    stride: u64,
    cap: usize,
}

impl<T: Clone> Decimated<T> {
    /// A buffer of at most `cap` kept points: none for 0 (a point too large to keep any),
    /// else at least 2.
    pub fn new(cap: usize) -> Self {
        Self {
            points: Vec::new(),
            last: None,
            stride: 1,
            cap: if cap == 0 { 0 } else { cap.max(2) },
        }
    }

    /// Whether a point of `step` would be kept (so a caller can skip computing the others).
    pub fn wants(&self, step: u64) -> bool {
        self.cap > 0 && step.is_multiple_of(self.stride)
    }

    /// Adds the point of `step`; steps must increase.
    pub fn push(&mut self, step: u64, value: T) {
        if self.cap == 0 {
            return;
        }
        if step.is_multiple_of(self.stride) {
            self.points.push((step, value.clone()));
            if self.points.len() > self.cap {
                self.stride *= 2;
                let stride = self.stride;
                self.points.retain(|(s, _)| s.is_multiple_of(stride));
            }
        }
        self.last = Some((step, value));
    }

    /// Drops every point after `step` (rewinding). The latest point is then the last one kept.
    pub fn truncate(&mut self, step: u64) {
        self.points.retain(|(s, _)| *s <= step);
        self.last = self.points.last().cloned();
    }

    /// The kept points in step order, ending with the latest one.
    pub fn iter(&self) -> impl Iterator<Item = &(u64, T)> {
        self.after(None)
    }

    /// The kept points after `step`, found by bisection (callers that follow a long path take
    /// only its new points).
    pub fn after(&self, step: Option<u64>) -> impl Iterator<Item = &(u64, T)> {
        let from = step.map_or(0, |k| self.points.partition_point(|(s, _)| *s <= k));
        let tail = self.last.as_ref().filter(|(s, _)| {
            self.points.last().is_none_or(|(p, _)| p != s) && step.is_none_or(|k| *s > k)
        });
        self.points[from..].iter().chain(tail)
    }

    /// The newest point, always kept.
    pub fn latest(&self) -> Option<&(u64, T)> {
        self.last.as_ref()
    }

    /// Whether no point was pushed yet.
    pub fn is_empty(&self) -> bool {
        self.last.is_none()
    }

    /// Points kept.
    pub fn len(&self) -> usize {
        self.iter().count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_every_step_until_full_then_halves() {
        let mut d = Decimated::new(4);
        for s in 0..=4 {
            d.push(s, s);
        }
        // 0..=4 is five points: over the cap, so only even steps remain, and 4 is the latest.
        let steps: Vec<u64> = d.iter().map(|p| p.0).collect();
        assert_eq!(steps, vec![0, 2, 4]);
        d.push(5, 5);
        let steps: Vec<u64> = d.iter().map(|p| p.0).collect();
        assert_eq!(steps, vec![0, 2, 4, 5], "the latest point is always there");
        for s in 6..=1000 {
            d.push(s, s);
        }
        assert!(d.len() <= 5);
        assert_eq!(d.latest(), Some(&(1000, 1000)));
        assert_eq!(d.iter().next(), Some(&(0, 0)), "the start is always kept");
    }

    #[test]
    fn a_cap_of_zero_keeps_nothing() {
        let mut d = Decimated::new(0);
        assert!(!d.wants(0));
        d.push(0, 0);
        assert!(d.is_empty());
        assert_eq!(d.iter().count(), 0);
    }

    #[test]
    fn truncate_and_after() {
        let mut d = Decimated::new(100);
        for s in 0..10 {
            d.push(s, s * 10);
        }
        d.truncate(6);
        assert_eq!(d.latest(), Some(&(6, 60)));
        let after: Vec<u64> = d.after(Some(4)).map(|p| p.0).collect();
        assert_eq!(after, vec![5, 6]);
        assert_eq!(d.after(None).count(), 7);
    }
}
